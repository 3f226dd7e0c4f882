"""Teacher loading (filled in by the REACT-KD work); the registry is served by the built-in plugin."""
BUILTIN_TEACHER_LOADERS: dict = {}
