# Credit-risk model serving images. Two targets:
#   trainer  the full pinned set (requirements.txt), the code and the embedded data; trains
#            the model at build time (python -m ml train -> models/) and runs the jobs:
#            train, score, monitor and retrain (the CronJobs use this image);
#   api      (the default, last stage) the serving image: only what serving imports
#            (requirements-serve.txt), ml/ app/ gunicorn.conf.py, the C tree walk and the
#            trainer's models/, run by gunicorn.
# Build:  docker build --target api -t credit-risk-api . (or podman/buildah; see docs/deploy.md)
# No `# syntax=` line: BuildKit would fetch a frontend image from a registry first.
#
# Base: Red Hat UBI 9 with Python 3.11 (sclorg s2i image). Its virtualenv /opt/app-root is
# on PATH and owned by UID 1001 in group 0 with g=u, so OpenShift's random UID (always in
# group 0) can read everything; WORKDIR /opt/app-root/src is HOME. The tag `1` follows
# Red Hat's security rebuilds of the image; what a build used is recorded by the digest
# the CD pipeline deploys. tools/image_check.sh builds with a stand-in of the same layout
# (BASE_IMAGE) where no registry is reachable.
# checkov:skip=CKV_DOCKER_7: the base is the ARG above, whose default carries the tag `1`
ARG BASE_IMAGE=registry.access.redhat.com/ubi9/python-311:1

# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS base
USER 1001
WORKDIR /opt/app-root/src
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---------------------------------------------------------------------------------------
FROM base AS native
# The C module: the tree walk of the compiled model (ml/serving/_treewalk.c, about 5x
# faster per request than the numpy walk). The base has gcc and the Python headers and the
# module needs no library, so this stage builds beside the pip installs; the images take only the compiled
# module, so no build output but the .so files ships.
COPY --chown=1001:0 setup.py ./
COPY --chown=1001:0 ml/serving/_treewalk.c ml/serving/
RUN python setup.py build_ext --inplace

# ---------------------------------------------------------------------------------------
FROM base AS trainer
# Every pin, training's and serving's (requirements.txt includes requirements-serve.txt:
# the same versions on both sides, no train/serve skew).
COPY --chown=1001:0 requirements-serve.txt requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
# Declared after the install: a build argument is part of every later RUN's cache key,
# and the commit changes with every build.
ARG REVISION=unknown
# Extra `python -m ml train` options for the build-time model (tools/image_check.sh asks
# for a quick one); empty: the full search, as released.
ARG TRAIN_ARGS=""
# Only the code and the embedded data set that the jobs read (.dockerignore keeps the
# rest of the context out).
COPY --chown=1001:0 ml/ ml/
COPY --chown=1001:0 data/ data/
COPY --from=native --chown=1001:0 /opt/app-root/src/ml/serving/_treewalk.*.so ml/serving/
# The context has no .git: the model card gets its commit from GIT_COMMIT. The model is
# signed with the BuildKit secret `model_signing_key` when the build has one (the CD
# pipeline's production key: docker build --secret id=model_signing_key,src=...; its
# public half reaches the pods through a ConfigMap, docs/deploy.md "Signing"). Without
# it, with a key pair made in this same step: its private half is deleted in the same
# layer, its public half is what the images trust by default (keys/trusted/build.pub).
# hadolint ignore=SC2086
RUN --mount=type=secret,id=model_signing_key,uid=1001 \
    set -e; mkdir -p keys/trusted; key=/run/secrets/model_signing_key; \
    if [ ! -s "$key" ]; then \
      key=/tmp/build-key/signing.pem; \
      python -m ml keygen --private "$key" --public keys/trusted/build.pub; \
    fi; \
    MODEL_SIGNING_KEY_FILE="$key" GIT_COMMIT="${REVISION}" python -m ml train ${TRAIN_ARGS}; \
    rm -rf /tmp/build-key
# The jobs run like the api: random UID in group 0, read-only root, /tmp writable. models/
# stays group-writable: compose.yaml trains into a volume that starts as a copy of it.
USER 0
RUN python -m compileall -q ml \
 && chgrp -R 0 /opt/app-root/src \
 && chmod -R g=u /opt/app-root/src \
 && chmod -R a-w ml data
USER 1001
ENV MODEL_DIR=/opt/app-root/src/models \
    MODEL_TRUSTED_KEYS=/opt/app-root/src/keys/trusted \
    MPLCONFIGDIR=/tmp/matplotlib
CMD ["python", "-m", "ml", "--help"]

# ---------------------------------------------------------------------------------------
FROM base AS api
# Serving's pins only: the compiled model is numpy arrays, so no sklearn, scipy, pandas
# or matplotlib (docs/deploy.md has the sizes).
# The libraries' own test suites (numpy's, jsonschema's...) are never imported: dropped in
# the same layer, about 17 MB.
COPY --chown=1001:0 requirements-serve.txt ./
RUN pip install --no-cache-dir -r requirements-serve.txt \
 && find "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
      -depth -type d -name tests -exec rm -rf {} +
# The build arguments after the install, so that a new commit reuses its layer.
ARG VERSION=0.0.0-dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="credit-risk-api" \
      org.opencontainers.image.description="Credit-risk scoring API: a trained scikit-learn pipeline behind Flask and gunicorn" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT" \
      io.k8s.display-name="credit-risk-api" \
      io.k8s.description="Credit-risk scoring API" \
      io.openshift.expose-services="8080:http" \
      io.openshift.tags="python,flask,gunicorn"

COPY --chown=1001:0 ml/ ml/
COPY --chown=1001:0 app/ app/
COPY --chown=1001:0 gunicorn.conf.py ./
COPY --from=trainer --chown=1001:0 /opt/app-root/src/models/ models/
COPY --from=trainer --chown=1001:0 /opt/app-root/src/keys/ keys/
COPY --from=native --chown=1001:0 /opt/app-root/src/ml/serving/_treewalk.*.so ml/serving/

# Byte-compile now: the root filesystem is read-only at run time. Then make the group
# (0, OpenShift's random UID's group) as able as the owner, and take write access from
# everyone: the running app writes only under /tmp (an emptyDir in Kubernetes).
USER 0
RUN python -m compileall -q ml app gunicorn.conf.py \
 && chgrp -R 0 /opt/app-root/src \
 && chmod -R g=u /opt/app-root/src \
 && chmod -R a-w ml app models keys gunicorn.conf.py
USER 1001

ENV PORT=8080 \
    MODEL_DIR=/opt/app-root/src/models \
    MODEL_TRUSTED_KEYS=/opt/app-root/src/keys/trusted \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus
EXPOSE 8080

# For docker/podman (needs the docker image format: buildah/podman --format docker).
# Kubernetes ignores it and uses the Deployment's probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health_check' % os.environ.get('PORT', '8080'), timeout=4)"]

CMD ["gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
