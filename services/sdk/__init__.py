"""What SDK clients need from the server: the definitions snapshot, its change stream,
and the exposures of decisions they made locally."""
