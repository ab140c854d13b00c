//! One module per noun of the command line: its subcommands, and how its
//! items show ([`crate::output::Render`]).

pub mod agents;
pub mod approvals;
pub mod audit;
pub mod deploy;
pub mod dlq;
pub mod follow;
pub mod messages;
pub mod runs;
pub mod schedules;
pub mod sessions;
pub mod tasks;
pub mod users;
pub mod versions;
pub mod workers;
pub mod workflows;

#[cfg(test)]
mod tests {
    use devcycle::proto::auth::v1 as auth;
    use devcycle::proto::executor::v1 as ex;
    use devcycle::proto::registry::v1 as reg;
    use devcycle::proto::scheduler::v1 as sch;

    use crate::output::Render;

    fn aligned<T: Render + Default>() {
        let name = std::any::type_name::<T>();
        assert_eq!(T::columns().len(), T::default().row().len(), "{name}");
    }

    #[test]
    fn every_row_fills_its_columns() {
        aligned::<reg::Agent>();
        aligned::<reg::AgentMatch>();
        aligned::<reg::AgentVersion>();
        aligned::<reg::Deployment>();
        aligned::<reg::Worker>();
        aligned::<ex::RunningTask>();
        aligned::<sch::Workflow>();
        aligned::<sch::Run>();
        aligned::<sch::Task>();
        aligned::<sch::DeadLetter>();
        aligned::<auth::Session>();
        aligned::<auth::User>();
        aligned::<auth::AuditEvent>();
        let t = sch::Task::default();
        let in_run = super::tasks::InRun(&t);
        assert_eq!(super::tasks::InRun::columns().len(), in_run.row().len());
        // `task list` is a run's table with the id in front.
        assert_eq!(t.row()[1..], in_run.row()[..]);
    }
}
