FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY crdt_ops ./crdt_ops
COPY services ./services
RUN pip install --no-cache-dir . && mkdir /data
VOLUME /data
ENTRYPOINT ["crdt-ops"]
