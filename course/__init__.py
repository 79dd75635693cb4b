"""The course shell: lesson manifest and the ``python -m course`` commands."""
