"""The container worker: long-polls SQS, leases jobs, runs them on rented GPUs."""
