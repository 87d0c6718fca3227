"""smoke and bench: HTTP clients, the checks that an endpoint runs the intended build and cache, speed."""
