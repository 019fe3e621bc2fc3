"""A small synthetic CT-like dataset and the demo that distils a teacher into a student on it."""
