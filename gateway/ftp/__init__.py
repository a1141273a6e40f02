"""The FTP server: pyftpdlib in its own thread, with database-backed logins scoped per job."""
