"""Code shared by the Chalice API (Lambda) and the container worker."""
