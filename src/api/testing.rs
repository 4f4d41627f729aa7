//! `obhost.testing.v1.StepTesting`: registered only with the `test-kinds` feature.

use tonic::{Request, Response, Status};

use super::{convert, status, validate};
use crate::proto::testing::v1 as tpb;
use crate::proto::testing::v1::step_testing_server::StepTesting;
use crate::steps::{Engine, Secrets, StepKind};
use crate::tasks::test_step::TestStep;

pub struct StepTestingService {
    engine: Engine,
}

impl StepTestingService {
    pub fn new(engine: Engine) -> Self {
        StepTestingService { engine }
    }
}

#[tonic::async_trait]
impl StepTesting for StepTestingService {
    async fn run_test_step(
        &self,
        request: Request<tpb::RunTestStepRequest>,
    ) -> Result<Response<tpb::RunTestStepResponse>, Status> {
        let req = request.into_inner();
        let run_for = match req.run_for {
            None => std::time::Duration::ZERO,
            Some(d) => std::time::Duration::try_from(d)
                .map_err(|_| validate::invalid("run_for must not be negative"))?,
        };
        let block_thread = match req.block_thread {
            None => std::time::Duration::ZERO,
            Some(d) => std::time::Duration::try_from(d)
                .map_err(|_| validate::invalid("block_thread must not be negative"))?,
        };
        let params = TestStep {
            run_for,
            fail_code: req.fail_code,
            resumable: req.resumable,
            progress_updates: req.progress_updates,
            panic_message: req.panic_message,
            ignore_cancel: req.ignore_cancel,
            block_thread,
            lock_key: req.lock_key,
            report_bytes: req.report_bytes,
        };
        let params = serde_json::to_value(params)
            .map_err(|e| Status::internal(format!("cannot encode test step: {e}")))?;
        let mut spec = validate::step_spec(req.meta.as_ref(), StepKind::Test)?;
        spec.params = params;
        let record = self
            .engine
            .submit(spec, Secrets::default())
            .await
            .map_err(status::from_engine)?;
        Ok(Response::new(tpb::RunTestStepResponse {
            step: Some(convert::step(record)),
        }))
    }
}
