# One image for the API, the worker, the emulator and migrations (the command differs).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini worker.py ./
COPY penny ./penny
COPY api ./api
COPY workflows ./workflows
COPY activities ./activities
COPY ledger ./ledger
COPY stripe_emulator ./stripe_emulator
RUN pip install --no-cache-dir .
ENV PENNY_HOST=0.0.0.0
