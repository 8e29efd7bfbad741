//! `medprm eval`: a PRM measured the way the literature does. Best-of-N curves on Med-PRM test
//! files and step-level metrics on labelled steps (Med-PRM training layout, ProcessBench,
//! VisualProcessBench), scored in process or through a running server's `/v1/rank` and
//! `/v1/score`, with a resumable score cache, plots and a self-contained HTML report.

pub mod formats;
pub mod metrics_bon;
pub mod metrics_step;
