# jupyterhub-activity-culler: the service, as a non-root image with the default policy inside.
# Build: docker build -t jupyterhub-activity-culler .
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY culler ./culler
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.12-slim
ARG UID=10101
RUN useradd --system --uid "${UID}" --no-create-home --shell /usr/sbin/nologin culler
COPY --from=build /wheels /wheels
# hadolint ignore=DL3013
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY policies/default.yaml /etc/jupyterhub-activity-culler/policy.yaml
ENV CULLER_POLICY=/etc/jupyterhub-activity-culler/policy.yaml \
    CULLER_BIND_URL=http://0.0.0.0:10101 \
    PYTHONUNBUFFERED=1
USER ${UID}
EXPOSE 10101
ENTRYPOINT ["jupyterhub-activity-culler"]
