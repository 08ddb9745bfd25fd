#!/bin/sh
# Runs once, when the PostgreSQL volume is first initialised (docker-entrypoint-initdb.d).
#
# POSTGRES_USER owns the database and runs the migrations; the application connects
# as APP_DB_USER, which can read and write rows but not change the schema, truncate,
# disable triggers or own anything. Tables and sequences the migrations create later
# are granted to it through default privileges; on the audit tables migration 20261202_0015
# takes UPDATE, DELETE and TRUNCATE back, leaving SELECT and INSERT.
set -eu
: "${APP_DB_USER:?}" "${APP_DB_PASSWORD:?}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v app_user="$APP_DB_USER" -v app_password="$APP_DB_PASSWORD" \
     -v owner="$POSTGRES_USER" -v db="$POSTGRES_DB" <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE :"app_user" LOGIN PASSWORD :'app_password' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"app_user";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app_user";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app_user";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"app_user";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT EXECUTE ON FUNCTIONS TO :"app_user";
SQL
