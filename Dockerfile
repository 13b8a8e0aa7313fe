# Serves the DeepSeek API with the bundled default model, CPU-only.
# Vertex AI custom containers: AIP_HTTP_PORT / AIP_PREDICT_ROUTE / AIP_HEALTH_ROUTE are honoured.
#
# torch==2.13.0 comes from whatever index pip is given: pass a CPU-only wheel index with
#   docker build --build-arg PIP_EXTRA_INDEX_URL=<your CPU torch index> .
# (the default PyPI build of torch carries CUDA and is several GB).
FROM python:3.11-slim

ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL}

# g++ builds the native decode kernels (deepseek/model/kernels.py); they are built once here, into
# the image's torch extension cache, so a container starts without compiling.
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir '.[serve]' \
    && python -c "from deepseek.model import kernels; print('native kernels:', kernels.available())"

ENV OMP_NUM_THREADS=2 \
    DEEPSEEK_DB=/data/deepseek.db
VOLUME /data
EXPOSE 8080
CMD ["sh", "-c", "deepseek serve --host 0.0.0.0 --port ${AIP_HTTP_PORT:-8080} --threads ${OMP_NUM_THREADS}"]
