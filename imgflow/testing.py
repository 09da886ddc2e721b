"""Plugin test kit (filled in below)."""
