# A user image with the in-server settle probe (settle probe `server`): your image plus one install.
# Build from the repository root, then set singleuser.image (or a profile's kubespawner_override.image):
#
#   docker build -f deploy/z2jh/probe-user-image.Dockerfile -t registry.example.org/lab/notebook-with-probe:2026-12-01 .
#
# The extension depends on jupyter-server only; installing it enables it in jupyterhub-singleuser.
# BASE_IMAGE is your lab's user image (a docker-stacks image here; --build-arg BASE_IMAGE=... for yours).
ARG BASE_IMAGE=quay.io/jupyter/scipy-notebook:python-3.12
FROM ${BASE_IMAGE}
COPY --chown=1000:100 extension /tmp/activity-culler-probe
RUN pip install --no-cache-dir /tmp/activity-culler-probe && rm -rf /tmp/activity-culler-probe
