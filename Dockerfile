# One image for every role of docker-compose.yml: worker, reference target, migrations, CLI.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY streams ./streams
COPY topologies ./topologies
COPY sql ./sql
COPY schemas ./schemas
RUN pip install --no-cache-dir -c constraints.txt . \
 && useradd --system --uid 10001 streams
USER streams
ENTRYPOINT ["streams"]
CMD ["--help"]
