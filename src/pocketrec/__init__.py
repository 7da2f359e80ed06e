"""pocketrec: on-device recommendation under a memory budget."""
__version__ = "0.1.0"
