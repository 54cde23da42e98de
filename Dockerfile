FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN useradd --create-home stevora && mkdir -p /app/var && chown stevora /app/var
USER stevora
CMD ["gunicorn", "stevora_project.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3"]
