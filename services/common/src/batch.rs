//! Answers for the callers whose requests went out together in one batch (canvas-api's
//! group commit, the gateway's batch requests).

use std::sync::Arc;

use tokio::sync::oneshot;

/// Where one caller's answer goes.
pub type Answer<T, E> = oneshot::Sender<Result<T, E>>;

/// Sends each caller its own result, in order; or, when the batch failed as a whole, the
/// batch's one error, shared by `wrap`, to every caller. A caller gone meanwhile needs no
/// answer.
pub fn answer_each<T, E>(
    answers: Vec<Answer<T, E>>,
    results: Result<Vec<Result<T, E>>, E>,
    wrap: impl Fn(Arc<E>) -> E,
) {
    match results {
        Ok(results) => {
            for (answer, result) in answers.into_iter().zip(results) {
                let _ = answer.send(result);
            }
        }
        Err(error) => {
            let error = Arc::new(error);
            for answer in answers {
                let _ = answer.send(Err(wrap(Arc::clone(&error))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Failed {
        Alone,
        Batch(Arc<Failed>),
        Whole,
    }

    type Answered = oneshot::Receiver<Result<u8, Failed>>;

    fn callers(n: usize) -> (Vec<Answer<u8, Failed>>, Vec<Answered>) {
        (0..n).map(|_| oneshot::channel()).unzip()
    }

    #[test]
    fn each_caller_gets_its_own_result_or_the_shared_failure() {
        let (answers, mut answered) = callers(2);
        answer_each(answers, Ok(vec![Ok(7), Err(Failed::Alone)]), Failed::Batch);
        assert_eq!(answered[0].try_recv().expect("answered"), Ok(7));
        assert_eq!(
            answered[1].try_recv().expect("answered"),
            Err(Failed::Alone)
        );

        let (answers, mut answered) = callers(2);
        answer_each(answers, Err(Failed::Whole), Failed::Batch);
        for answered in &mut answered {
            assert_eq!(
                answered.try_recv().expect("answered"),
                Err(Failed::Batch(Arc::new(Failed::Whole)))
            );
        }
    }
}
