-- The W3C traceparent of the request that created a task ('' when traces
-- were off): every attempt, retry and dead-letter requeue of the task is
-- a span of that trace.
ALTER TABLE sched_tasks ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
