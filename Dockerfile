FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 STEVORA_VAR_DIR=/app/var PORT=8000
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# Static files are collected now, as root, into the image (WhiteNoise serves them); the
# services then run as an unprivileged user who may write only /app/var (beat's schedule).
RUN SECRET_KEY=collectstatic-at-build-time python manage.py collectstatic --noinput -v0 \
    && useradd --create-home --uid 10001 stevora \
    && mkdir -p /app/var && chown stevora /app/var
USER stevora
EXPOSE 8000
# compose.yaml runs bin/bootstrap once, then web (this), workers and one beat.
CMD ["gunicorn", "stevora_project.wsgi", "--workers", "3", "--access-logfile", "-"]
