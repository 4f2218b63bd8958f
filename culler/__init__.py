"""jupyterhub-activity-culler: stop JupyterHub servers nobody has visited for a while, safely."""

__version__ = "0.1.0"
