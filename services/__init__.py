"""Domain services: the only code that mutates the database (views and tasks call these)."""
