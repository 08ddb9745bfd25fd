# The platform's image: API (gunicorn), Celery worker, beat and Flower run from it.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc make && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APP_ENV=production \
    MOLAM_ENV_FILE= \
    MOLAM_VAR_DIR=/app/var
RUN groupadd --system --gid 10001 molam \
    && useradd --system --uid 10001 --gid molam --home-dir /app --no-create-home --shell /usr/sbin/nologin molam
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root . .
RUN mkdir -p /app/var && chown molam:molam /app/var
USER molam
EXPOSE 3010
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "scripts.healthcheck", "http://127.0.0.1:3010/readyz"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "-b", "0.0.0.0:3010", "api.wsgi:app"]
