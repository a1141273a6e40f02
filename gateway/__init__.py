"""gateway: a one-process FTP + HTTP storage gateway for an image-editing job service."""

__version__ = "0.1.0"
