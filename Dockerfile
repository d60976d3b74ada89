# One image for every part of the gateway; the command picks the part:
#   docker run IMAGE api | worker | simulator --host 0.0.0.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY shared ./shared
COPY simulator ./simulator
COPY cli ./cli
RUN pip install . && useradd --create-home --uid 10001 luma

USER luma
ENTRYPOINT ["luma-queue"]
CMD ["--help"]
