"""A plain Celery app for the install-beside test: what `deploykit manifest snapshot -A` loads in
every environment deploykit is installed into. No broker is contacted."""

from celery import Celery

app = Celery("beside", broker="memory://")


@app.task(name="beside.add")
def add(x, y, *, scale=1):
    return (x + y) * scale


@app.task(name="beside.notify", bind=True, max_retries=3)
def notify(self, user_id, message="hello"):
    return user_id, message
