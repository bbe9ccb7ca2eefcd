"""The bottom layer: errors, files, the config base, special tokens, hashing and what every stage command shares."""
