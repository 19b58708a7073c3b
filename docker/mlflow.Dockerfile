# A stand-alone MLflow tracking server, for when the server does not run on the Ray head
# (launch/cluster.yaml starts one there itself): PostgreSQL backend store, S3 artifacts.
#
#   docker build -f docker/mlflow.Dockerfile -t bst-mlflow:latest .
#   docker run -p 5000:5000 \
#     -e BACKEND_STORE_URI=postgresql+psycopg://bst:PASSWORD@db-host:5432/mlflow \
#     -e ARTIFACTS_DESTINATION=s3://YOUR-BUCKET/bst-search/mlartifacts \
#     -e AWS_ACCESS_KEY_ID=... -e AWS_SECRET_ACCESS_KEY=... bst-mlflow:latest
#
# Keep MLFLOW_VERSION equal to the mlflow the trials log with.
FROM python:3.11-slim

ARG MLFLOW_VERSION=3.17.2
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    BACKEND_STORE_URI=sqlite:////mlflow/mlflow.db \
    ARTIFACTS_DESTINATION=/mlflow/mlartifacts \
    ALLOWED_HOSTS=

RUN pip install "mlflow==${MLFLOW_VERSION}" "psycopg[binary]" boto3 \
 && mkdir -p /mlflow

EXPOSE 5000
VOLUME /mlflow
# ALLOWED_HOSTS: comma-separated Host headers beyond localhost and private IPs (MLflow's
# default), e.g. the public name of the server. The store URL (its password) goes through
# MLflow's environment variable, never the command line.
CMD MLFLOW_BACKEND_STORE_URI="$BACKEND_STORE_URI" exec mlflow server --host 0.0.0.0 --port 5000 \
      --artifacts-destination "$ARTIFACTS_DESTINATION" \
      ${ALLOWED_HOSTS:+--allowed-hosts "$ALLOWED_HOSTS"}
