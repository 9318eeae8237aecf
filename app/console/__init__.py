"""The web console: a single page served at ``/`` by the API itself, over the same ``/v1`` API.

Its scripts and styles are built from ``console/`` (npm, esbuild) into ``static/dist/`` by ``make install``
and the Docker image's console stage; nothing is loaded from anywhere but this service."""
