class CliError(Exception):
    """A mistake the user can fix; printed as one line, exit status 2."""
