"""The revisions of the nvc_ tables, one file each, oldest first (alembic reads them by path; this file makes them
package data of the wheel)."""
