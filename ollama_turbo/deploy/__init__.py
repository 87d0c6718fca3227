"""deploy, rollback, status: the SSH transport, service managers and releases on a host."""
