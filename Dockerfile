# syntax=docker/dockerfile:1
# Credit-risk model serving image. Two targets:
#   trainer  installs the pinned dependencies and trains the model from the embedded data
#            (python -m ml train), writing models/<version>/ and models/LATEST;
#   api      (the default, last stage) the serving image: the same pinned dependencies,
#            ml/ app/ gunicorn.conf.py and the trainer's models/, run by gunicorn.
# Build:  docker build --target api -t credit-risk-api . (or podman/buildah; see docs/deploy.md)
#
# Base: Red Hat UBI 9 with Python 3.11 (sclorg s2i image). Its virtualenv /opt/app-root is
# on PATH and owned by UID 1001 in group 0 with g=u, so OpenShift's random UID (always in
# group 0) can read everything; WORKDIR /opt/app-root/src is HOME. The tag `1` follows
# Red Hat's security rebuilds of the image; what a build used is recorded by the digest
# the CD pipeline deploys.

# ---------------------------------------------------------------------------------------
FROM registry.access.redhat.com/ubi9/python-311:1 AS deps
USER 1001
WORKDIR /opt/app-root/src
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Exact pins, the same for training and serving (no train/serve skew).
COPY --chown=1001:0 requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# ---------------------------------------------------------------------------------------
FROM deps AS trainer
ARG REVISION=unknown
# Only the code and the embedded data set that training reads (.dockerignore keeps the
# rest of the context out).
COPY --chown=1001:0 ml/ ml/
COPY --chown=1001:0 data/ data/
# The context has no .git: the model card gets its commit from GIT_COMMIT.
RUN GIT_COMMIT="${REVISION}" python -m ml train

# ---------------------------------------------------------------------------------------
FROM deps AS native
# The C module: the tree walk of the serving fast path and the batch scorer
# (ml/serving/_treewalk.c, about 5x faster per request than the numpy walk it replaces). The
# builder image has gcc and the Python headers; the api stage takes only the compiled module,
# so no compiler ships.
COPY --chown=1001:0 setup.py ./
COPY --chown=1001:0 ml/serving/_treewalk.c ml/serving/
RUN python setup.py build_ext --inplace

# ---------------------------------------------------------------------------------------
FROM deps AS api
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
      io.openshift.tags="python,flask,gunicorn,scikit-learn"

COPY --chown=1001:0 ml/ ml/
COPY --chown=1001:0 app/ app/
COPY --chown=1001:0 gunicorn.conf.py ./
# The embedded data set (no other data): the retrain CronJob runs from this image and
# refits on it plus the labelled outcomes in the prediction store.
COPY --chown=1001:0 data/ data/
COPY --from=trainer --chown=1001:0 /opt/app-root/src/models/ models/
COPY --from=native --chown=1001:0 /opt/app-root/src/ml/serving/_treewalk.*.so ml/serving/

# Byte-compile now: the root filesystem is read-only at run time. Then make the group
# (0, OpenShift's random UID's group) as able as the owner, and take write access from
# everyone: the running app writes only under /tmp (an emptyDir in Kubernetes).
USER 0
RUN python -m compileall -q ml app gunicorn.conf.py \
 && chgrp -R 0 /opt/app-root/src \
 && chmod -R g=u /opt/app-root/src \
 && chmod -R a-w ml app models gunicorn.conf.py
USER 1001

ENV PORT=8080 \
    MODEL_DIR=/opt/app-root/src/models \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    MPLCONFIGDIR=/tmp/matplotlib
EXPOSE 8080

# For docker/podman (needs the docker image format: buildah/podman --format docker).
# Kubernetes ignores it and uses the Deployment's probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health_check' % os.environ.get('PORT', '8080'), timeout=4)"]

CMD ["gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
