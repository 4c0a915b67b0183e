//! Labelled metric families whose label count is part of their type.
//!
//! prometheus' `with_label_values(&[..])` panics when the number of values
//! differs from the number of label names. A [`Family<T, N>`] is created with
//! `[&str; N]` names and looked up with `[&str; N]` values, so a wrong count
//! does not compile. Lookups happen when the proxy starts or reloads (or at
//! scrape time); what the session path touches are the resolved series.

use prometheus::core::{MetricVec, MetricVecBuilder};

/// A prometheus vector type (`IntCounterVec`, `GaugeVec`, ...).
pub trait Vector {
    type Series;
    fn lookup(&self, values: &[&str]) -> prometheus::Result<Self::Series>;
}

impl<T: MetricVecBuilder> Vector for MetricVec<T> {
    type Series = T::M;
    fn lookup(&self, values: &[&str]) -> prometheus::Result<T::M> {
        self.get_metric_with_label_values(values)
    }
}

/// A vector `V` with `N` label names.
///
/// ```compile_fail
/// use mongo_oidc_proxy::metrics::Family;
/// use prometheus::{IntCounterVec, Opts};
/// let f = Family::build(["a", "b"], |l| IntCounterVec::new(Opts::new("x", "x"), l)).unwrap();
/// f.with(["only one"]); // two labels, one value: does not compile
/// ```
#[derive(Clone)]
pub struct Family<V, const N: usize>(V);

impl<V: Vector, const N: usize> Family<V, N> {
    /// `make` is the vector type's constructor (`IntCounterVec::new(opts, _)`),
    /// given exactly these `labels`.
    pub fn build(
        labels: [&str; N],
        make: impl FnOnce(&[&str]) -> prometheus::Result<V>,
    ) -> prometheus::Result<Family<V, N>> {
        make(&labels).map(Family)
    }

    /// The series for these label values, created if new.
    // prometheus refuses a lookup only when the number of values differs
    // from the number of label names, and both are N here.
    #[allow(clippy::expect_used)]
    pub fn with(&self, values: [&str; N]) -> V::Series {
        self.0
            .lookup(&values)
            .expect("N label names, N label values")
    }

    /// The vector, to register, reset or collect.
    pub fn vec(&self) -> &V {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounterVec, Opts};

    #[test]
    fn looks_up_by_as_many_values_as_names() {
        let f = Family::build(["a", "b"], |l| {
            IntCounterVec::new(Opts::new("x_total", "help"), l)
        })
        .expect("family");
        f.with(["1", "2"]).inc();
        assert_eq!(f.with(["1", "2"]).get(), 1);
        assert_eq!(f.vec().with_label_values(&["1", "2"]).get(), 1);
    }
}
