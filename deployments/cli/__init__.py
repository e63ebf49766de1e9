"""The operator CLI, console script `medicine-man` (main)."""
