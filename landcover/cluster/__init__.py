"""The cluster corner: Dask clients, batch jobs, repositories and data-local training.

Modules (import them directly; this package imports nothing heavy):

``client``
    Clients and where a job runs: :func:`~landcover.cluster.client.get_client`,
    :class:`~landcover.cluster.client.ClusterOptions`, :func:`~landcover.cluster.client.open_cluster`.
``batch``
    Many cubes built as retried tasks with a report: :func:`~landcover.cluster.batch.build_cubes`.
``repository``, ``registry``
    Where the data is: :class:`~landcover.cluster.repository.Repository` (cubes on a worker,
    replicas) and the worker preload that advertises them
    (``dask worker ... --preload landcover.cluster.registry --repository NAME=DIR``).
Data-local training (models travel, cubes stay on their workers):
    ``config`` (:class:`~landcover.cluster.config.StepConfig`, what one leg does, and the job's
    :class:`~landcover.cluster.config.DistributedTrainConfig`), ``records`` (legs, faults,
    models, accounting), ``legs`` (tasks run on the workers), ``payload`` and ``aggregate``
    (what travels and how it is combined), ``runner`` (pinned tasks with failover),
    ``engine`` (:func:`~landcover.cluster.engine.train_distributed`), ``baseline`` (the
    single-machine comparison), ``report`` and ``job``
    (:func:`~landcover.cluster.job.run_distributed_job`, behind ``landcover train --distributed``).
"""
