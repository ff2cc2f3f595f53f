"""The Hydra configs of the commands. Installed as the package ``hrn.conf`` (pyproject.toml maps conf/ there), so
an installed hrn finds them; this file only makes the folder a package. Nothing here is Python."""
