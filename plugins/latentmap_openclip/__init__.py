"""latentmap plugin (filled in by its issue)."""
