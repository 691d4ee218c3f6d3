"""An example flow file: `ostinato up deploy/examples/hello.py` registers its deployment, and a
run of it then starts every minute.

This folder is the bundle `deployment create` uploads, so it holds only this file.
"""

from ostinato.deploy import Cron, Deployment, flow, get_run_logger, task


@task
def greeting(name: str) -> str:
    return f"Hello, {name}!"


@task(retries=2, retry_delay=1)
def count_letters(text: str) -> int:
    return sum(character.isalpha() for character in text)


@flow(name="hello", timeout=60)
def hello(name: str = "world", times: int = 1) -> int:
    """Greet `name` `times` times; the result is how many letters were written."""
    logger = get_run_logger()
    letters = 0
    for _ in range(times):
        text = greeting(name)
        logger.info(text)
        letters += count_letters(text)
    logger.info("wrote %d letters", letters)
    return letters


every_minute = Deployment(hello, "every-minute", schedules=[Cron("* * * * *")],
                          parameters={"name": "Ostinato", "times": 2}, tags=["example"])
