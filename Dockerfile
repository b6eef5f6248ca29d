FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY services ./services
COPY models ./models
RUN pip install --no-cache-dir . && useradd --create-home ingest
USER ingest
