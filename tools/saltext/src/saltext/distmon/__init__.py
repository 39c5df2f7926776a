"""distmon as an installed Salt extension (saltext-distmon); the modules live in the subpackages."""
