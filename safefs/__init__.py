"""safefs: an end-to-end encrypted, versioned network drive."""
