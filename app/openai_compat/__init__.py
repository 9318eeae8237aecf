"""The OpenAI-compatible surface: ``/v1/files`` and ``/v1/fine_tuning/jobs`` in the shapes of OpenAI's
fine-tuning API, so that the official ``openai`` SDK pointed at this service manages image fine-tuning jobs.

A thin mapping (``mapping``) onto the data set and job services: an uploaded file is a data set, a
fine-tuning job is a job, and everything this service's spec can say goes in ``extra_body={"spec": ...}``.
"""
