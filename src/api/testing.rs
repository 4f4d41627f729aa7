//! `obhost.testing.v1.StepTesting`: registered only with the `test-kinds` feature.
//! Its one RPC makes a step like any other (see [`super::step_requests`]).

use tonic::{Request, Response, Status};

use super::step_requests::{Rules, StepCalls, StepRequest};
use super::validate;
use crate::proto::testing::v1 as tpb;
use crate::proto::testing::v1::step_testing_server::StepTesting;
use crate::proto::v1 as pb;
use crate::steps::{Secrets, StepKind, StepSpec};
use crate::tasks::StepParams;
use crate::tasks::test_step::TestStep;

pub struct StepTestingService {
    steps: StepCalls,
}

impl StepTestingService {
    pub fn new(steps: StepCalls) -> Self {
        StepTestingService { steps }
    }
}

fn duration(field: &str, d: Option<pbjson_types::Duration>) -> Result<std::time::Duration, Status> {
    match d {
        None => Ok(std::time::Duration::ZERO),
        Some(d) => std::time::Duration::try_from(d)
            .map_err(|_| validate::invalid(format!("{field} must not be negative"))),
    }
}

impl StepRequest for tpb::RunTestStepRequest {
    const CALL: &'static str = "RunTestStep";
    const ACTION: &'static str = "test";
    const KIND: StepKind = StepKind::Test;
    type Reply = tpb::RunTestStepResponse;

    fn meta(&self) -> Option<&pb::StepMeta> {
        self.meta.as_ref()
    }

    fn named(&self) -> (&str, &str) {
        ("", "")
    }

    fn resolve(self, _: &Rules, _: &StepSpec) -> Result<(StepParams, Secrets), Status> {
        let step = TestStep {
            run_for: duration("run_for", self.run_for)?,
            fail_code: self.fail_code,
            resumable: self.resumable,
            progress_updates: self.progress_updates,
            panic_message: self.panic_message,
            ignore_cancel: self.ignore_cancel,
            block_thread: duration("block_thread", self.block_thread)?,
            lock_key: self.lock_key,
            report_bytes: self.report_bytes,
        };
        Ok((StepParams::Test(step), Secrets::default()))
    }

    fn reply(step: Option<pb::Step>) -> Self::Reply {
        tpb::RunTestStepResponse { step }
    }
}

#[tonic::async_trait]
impl StepTesting for StepTestingService {
    async fn run_test_step(
        &self,
        request: Request<tpb::RunTestStepRequest>,
    ) -> Result<Response<tpb::RunTestStepResponse>, Status> {
        self.steps.call(request).await
    }
}
