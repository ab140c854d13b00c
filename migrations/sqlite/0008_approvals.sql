-- Approval tasks waiting for a decision, by when they time out. A separate
-- index keeps the dispatch path's deadline index as it is.
CREATE INDEX sched_tasks_waiting ON sched_tasks (schedule_deadline)
    WHERE state = 'waiting';
