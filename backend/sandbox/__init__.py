"""Users' model files run here: a child process per model, confined before it opens the file."""
