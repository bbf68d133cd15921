FROM python:3.11-slim
RUN useradd --create-home turnstream
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir .
USER turnstream
EXPOSE 8000
CMD ["turnstream", "serve"]
