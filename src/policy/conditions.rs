//! `when:` conditions: CEL expressions compiled once when a policy loads,
//! evaluated on every Check whose rule has them.
//!
//! The environment a condition sees:
//!
//! | variable | what |
//! |---|---|
//! | `claims` | the verified token's claims, as JSON (`claims.sub`, `claims.authorization_details`) |
//! | `request` | `method`, `host`, `path` (as rules match it: decoded, no query or `;` parameters), `headers` (lower-case names), `params` (path captures) |
//! | `token` | `scopes` (the granted scopes, a list) and `client` (`azp`, else `client_id`) |
//! | `actor` | the RFC 8693 `act` chain, outermost first (`actor[0].sub`); empty without `act` |
//!
//! A condition that names any other variable does not compile, and neither
//! does one whose shape or estimated cost is over the bounds of [`cost`]
//! (DESIGN.md §8): every accepted condition evaluates in bounded time and
//! stack. Only `true` lets a request through: `false` is a denial, and so is
//! an error or a non-boolean result (never an allow).

use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::parser::Parser;
use cel::{Context, Env, Value};

use super::cost;

/// The variables a condition may use.
pub const VARIABLES: [&str; 4] = ["claims", "request", "token", "actor"];

/// The standard library, shared by every evaluation.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// One compiled `when` expression.
pub struct Condition {
    source: Box<str>,
    expression: IdedExpr,
    uses: Uses,
    /// Its estimated cost on the largest inputs ([`cost::estimate`]).
    cost: u64,
    /// The top-level claims it reads; `None` when it reads `claims` as a
    /// whole (`size(claims)`, `claims.exists(…)`, `claims[x]`).
    claim_names: Option<Box<[Box<str>]>>,
}

/// Which variables (and which costly parts of them) a condition reads, so
/// that a Check builds only those.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uses {
    /// `claims`.
    pub claims: bool,
    /// `request`.
    pub request: bool,
    /// `request.headers` (building the header map is the costly part).
    pub headers: bool,
    /// `token`.
    pub token: bool,
    /// `actor`.
    pub actor: bool,
}

impl Uses {
    fn union(self, other: Uses) -> Uses {
        Uses {
            claims: self.claims || other.claims,
            request: self.request || other.request,
            headers: self.headers || other.headers,
            token: self.token || other.token,
            actor: self.actor || other.actor,
        }
    }
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Clone for Condition {
    fn clone(&self) -> Self {
        Condition::compile(&self.source).expect("a compiled condition compiles again")
    }
}

impl Condition {
    /// Compiles `source`; the error names the problem and where it is.
    /// A condition over [`cost::BUDGET`] on its own compiles (a rule's
    /// conditions together are held to the budget: [`check_budget`]).
    pub fn compile(source: &str) -> Result<Self, String> {
        cost::check_length(source).map_err(|e| e.to_string())?;
        let expression = parse(source)?;
        // Before any recursive walk of the tree.
        cost::check_depth(&expression).map_err(|e| e.to_string())?;
        let free = free_variables(&expression);
        if let Some(unknown) = free.iter().find(|v| !VARIABLES.contains(&v.as_str())) {
            return Err(format!(
                "unknown variable `{unknown}`: a condition can use {}",
                VARIABLES.join(", ")
            ));
        }
        let uses = Uses {
            claims: free.iter().any(|v| v == "claims"),
            request: free.iter().any(|v| v == "request"),
            headers: free.iter().any(|v| v == "request") && source.contains("headers"),
            token: free.iter().any(|v| v == "token"),
            actor: free.iter().any(|v| v == "actor"),
        };
        let cost = cost::estimate(&expression).map_err(|e| e.to_string())?;
        let mut claim_names = Some(Vec::new());
        claims_read(&expression, &mut claim_names);
        Ok(Condition {
            source: source.into(),
            expression,
            uses,
            cost,
            claim_names: claim_names.map(Vec::into_boxed_slice),
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// What it reads.
    pub fn uses(&self) -> Uses {
        self.uses
    }

    /// Its estimated cost on the largest inputs, in the units of
    /// [`cost::BUDGET`].
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// The top-level claims it reads (`claims.sub`, `has(claims.org)`,
    /// `claims["https://example.com/org"]`); `None` when it reads `claims`
    /// in a way that can reach any claim.
    pub fn claim_names(&self) -> Option<&[Box<str>]> {
        self.claim_names.as_deref()
    }
}

/// Parses `source` with the standard macros, refusing brackets, calls and
/// `?:` nested deeper than [`cost::MAX_NESTING`] (the parser recurses on
/// them, with large frames).
fn parse(source: &str) -> Result<IdedExpr, String> {
    Parser::new()
        .max_recursion_depth(cost::MAX_NESTING)
        .parse(source)
        .map_err(|e| {
            let message = e.to_string();
            if message.contains("Recursion limit") {
                return cost::CostError::TooNested.to_string();
            }
            // cel's message is multi-line (with a caret under the position).
            message
                .lines()
                .next()
                .unwrap_or("syntax error")
                .trim_start_matches("ERROR: ")
                .replace("<input>:", "at line:column ")
        })
}

/// Collects into `names` the claims `expr` reads by a constant name;
/// any other use of the free variable `claims` makes it `None` (all).
fn claims_read(expr: &IdedExpr, names: &mut Option<Vec<Box<str>>>) {
    let is_claims = |e: &IdedExpr, bound: &[String]| matches!(&e.expr, Expr::Ident(n) if n == "claims" && !bound.iter().any(|b| b == n));
    walk(expr, &mut Vec::new(), &mut |expr, bound| {
        let constant_name = match &expr.expr {
            Expr::Ident(_) if is_claims(expr, bound) => {
                *names = None;
                return false;
            }
            Expr::Select(select) if is_claims(&select.operand, bound) => select.field.as_str(),
            Expr::Call(call)
                if call.func_name == cel::common::ast::operators::INDEX
                    && call.args.len() == 2
                    && is_claims(&call.args[0], bound) =>
            {
                match &call.args[1].expr {
                    Expr::Literal(LiteralValue::String(name)) => name.inner(),
                    // `claims[x]`: any claim.
                    _ => return true,
                }
            }
            _ => return true,
        };
        if let Some(names) = names {
            names.push(constant_name.into());
        }
        false
    });
}

/// The variables of `expr` not bound by an enclosing comprehension
/// (`exists(d, …)` binds `d`).
fn free_variables(expr: &IdedExpr) -> Vec<String> {
    let mut free = Vec::new();
    walk(expr, &mut Vec::new(), &mut |expr, bound| {
        if let Expr::Ident(name) = &expr.expr
            && !bound.contains(name)
            && !free.contains(name)
        {
            free.push(name.clone());
        }
        true
    });
    free
}

/// Calls `visit` on `expr` with the names enclosing comprehensions bind,
/// then on its children unless `visit` returns false.
fn walk(
    expr: &IdedExpr,
    bound: &mut Vec<String>,
    visit: &mut impl FnMut(&IdedExpr, &[String]) -> bool,
) {
    if !visit(expr, bound) {
        return;
    }
    match &expr.expr {
        Expr::Select(select) => walk(&select.operand, bound, visit),
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                walk(target, bound, visit);
            }
            call.args.iter().for_each(|arg| walk(arg, bound, visit));
        }
        Expr::List(list) => list.elements.iter().for_each(|e| walk(e, bound, visit)),
        Expr::Map(map) => map
            .entries
            .iter()
            .for_each(|e| walk_entry(&e.expr, bound, visit)),
        Expr::Struct(object) => object
            .entries
            .iter()
            .for_each(|e| walk_entry(&e.expr, bound, visit)),
        Expr::Comprehension(comprehension) => {
            walk(&comprehension.iter_range, bound, visit);
            walk(&comprehension.accu_init, bound, visit);
            let scope = bound.len();
            bound.push(comprehension.iter_var.clone());
            bound.extend(comprehension.iter_var2.clone());
            bound.push(comprehension.accu_var.clone());
            for part in [
                &comprehension.loop_cond,
                &comprehension.loop_step,
                &comprehension.result,
            ] {
                walk(part, bound, visit);
            }
            bound.truncate(scope);
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn walk_entry(
    entry: &EntryExpr,
    bound: &mut Vec<String>,
    visit: &mut impl FnMut(&IdedExpr, &[String]) -> bool,
) {
    match entry {
        EntryExpr::StructField(field) => walk(&field.value, bound, visit),
        EntryExpr::MapEntry(entry) => {
            walk(&entry.key, bound, visit);
            walk(&entry.value, bound, visit);
        }
    }
}

/// The estimated cost of evaluating all of `conditions` (a rule's `when`).
pub fn total_cost(conditions: &[Condition]) -> u64 {
    conditions
        .iter()
        .fold(0, |sum, c| sum.saturating_add(c.cost))
}

/// Refuses a condition that, with the ones before it in the same rule, goes
/// over [`cost::BUDGET`]; `before` is their estimated cost.
pub fn check_budget(before: u64, condition: &Condition) -> Result<(), String> {
    let estimate = before.saturating_add(condition.cost);
    if estimate > cost::BUDGET {
        return Err(cost::CostError::OverBudget {
            estimate,
            budget: cost::BUDGET,
        }
        .to_string());
    }
    Ok(())
}

/// What the union of `conditions` reads.
pub fn uses_of(conditions: &[Condition]) -> Uses {
    conditions
        .iter()
        .fold(Uses::default(), |uses, c| uses.union(c.uses))
}

/// The values a Check binds, built only for the variables its conditions
/// use ([`Uses`]).
#[derive(Default)]
pub struct Bindings {
    /// `claims`.
    pub claims: Option<Value>,
    /// `request`.
    pub request: Option<Value>,
    /// `token`.
    pub token: Option<Value>,
    /// `actor`.
    pub actor: Option<Value>,
}

/// Where a policy's costly conditions (estimated over [`cost::INLINE_COST`])
/// are evaluated: on the blocking pool rather than the request workers, one
/// Check at a time per policy and at most one per CPU over all policies, so a
/// tenant whose conditions are slow queues behind itself, never in front of
/// another tenant's Checks.
#[derive(Clone)]
pub struct ConditionGate(Arc<tokio::sync::Semaphore>);

/// How many costly evaluations run at once over all policies.
static EVALUATORS: LazyLock<tokio::sync::Semaphore> = LazyLock::new(|| {
    tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
});

impl ConditionGate {
    /// A gate for one policy's rules.
    pub fn new() -> Self {
        ConditionGate(Arc::new(tokio::sync::Semaphore::new(1)))
    }

    /// Evaluates `conditions` off the request workers, after this policy's
    /// earlier Checks.
    pub async fn evaluate(
        &self,
        conditions: Arc<[Condition]>,
        bindings: Bindings,
    ) -> Result<(), ConditionFailure> {
        // Neither semaphore is ever closed.
        let _policy = self.0.acquire().await.ok();
        let _evaluator = EVALUATORS.acquire().await.ok();
        tokio::task::spawn_blocking(move || evaluate(&conditions, &bindings))
            .await
            .unwrap_or_else(|_| {
                Err(ConditionFailure::Error {
                    index: 0,
                    message: "the evaluation failed".into(),
                })
            })
    }
}

impl Default for ConditionGate {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ConditionGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConditionGate")
    }
}

/// Every gate is equal: it holds no configuration.
impl PartialEq for ConditionGate {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Why the conditions did not let the request through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionFailure {
    /// The condition at this index evaluated to `false`.
    #[error("when[{0}] does not hold")]
    False(usize),
    /// The condition at this index could not be evaluated (a missing
    /// claim, a wrong type) or is not a boolean: never an allow.
    #[error("when[{index}] could not be evaluated: {message}")]
    Error {
        /// Which condition.
        index: usize,
        /// What went wrong (no claim values).
        message: String,
    },
}

/// Evaluates every condition in order; all must be `true`. Values larger
/// than conditions are costed for ([`cost::Size::CLAIMS`],
/// [`cost::Size::REQUEST`]) are not evaluated: an error, never an allow.
pub fn evaluate(conditions: &[Condition], bindings: &Bindings) -> Result<(), ConditionFailure> {
    let mut context = Context::with_env(ENV.clone());
    for (name, value, bound) in [
        ("claims", &bindings.claims, cost::Size::CLAIMS),
        ("request", &bindings.request, cost::Size::REQUEST),
        ("token", &bindings.token, cost::Size::CLAIMS),
        ("actor", &bindings.actor, cost::Size::CLAIMS),
    ] {
        let Some(value) = value else { continue };
        if !cost::fits(value, bound) {
            return Err(ConditionFailure::Error {
                index: 0,
                message: format!(
                    "`{name}` is larger than conditions evaluate ({} entries, {} KiB)",
                    bound.items,
                    bound.bytes / 1024
                ),
            });
        }
        context.add_variable_from_value(name, value.clone());
    }
    for (index, condition) in conditions.iter().enumerate() {
        match Value::resolve(&condition.expression, &context) {
            Ok(Value::Bool(true)) => {}
            Ok(Value::Bool(false)) => return Err(ConditionFailure::False(index)),
            Ok(other) => {
                return Err(ConditionFailure::Error {
                    index,
                    message: format!("the result is a {:?}, not a bool", other.type_of()),
                });
            }
            Err(error) => {
                return Err(ConditionFailure::Error {
                    index,
                    message: describe(&error),
                });
            }
        }
    }
    Ok(())
}

/// An execution error, without values from the request or the token.
fn describe(error: &cel::ExecutionError) -> String {
    match error {
        cel::ExecutionError::NoSuchKey(key) => format!("no such key {key}"),
        cel::ExecutionError::UndeclaredReference(name) => format!("undeclared reference {name}"),
        cel::ExecutionError::UnexpectedType { .. } => "a value has an unexpected type".into(),
        _ => "an operation failed (wrong type or missing value)".into(),
    }
}

/// A JSON value as a CEL value.
pub fn to_cel(value: &serde_json::Value) -> Value {
    cel::to_value(value).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bindings(claims: serde_json::Value, request: serde_json::Value) -> Bindings {
        Bindings {
            claims: Some(to_cel(&claims)),
            request: Some(to_cel(&request)),
            ..Bindings::default()
        }
    }

    #[test]
    fn a_condition_names_the_claims_it_reads_or_reads_them_all() {
        let names = |source: &str| {
            Condition::compile(source)
                .unwrap()
                .claim_names()
                .map(|names| names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            names("claims.sub == request.params.user && has(claims.org)"),
            Some(vec!["sub".into(), "org".into()])
        );
        assert_eq!(
            names(r#"claims["https://example.com/org"].id == "acme""#),
            Some(vec!["https://example.com/org".into()])
        );
        assert_eq!(
            names("claims.authorization_details.exists(d, d.type == 'payment')"),
            Some(vec!["authorization_details".into()])
        );
        assert_eq!(
            names("token.scopes.exists(claims, claims == 'a')"),
            Some(vec![])
        );
        for reads_all in [
            "size(claims) > 2",
            "claims.exists(name, name == 'org')",
            "'org' in claims",
            "claims[request.params.name] == 'x'",
        ] {
            assert_eq!(names(reads_all), None, "{reads_all}");
        }
    }

    #[test]
    fn conditions_compile_once_and_name_their_errors() {
        assert!(Condition::compile("claims.sub == request.params.user").is_ok());
        let error = Condition::compile("claims.sub ==").unwrap_err();
        assert!(error.contains("at line:column 1:14"), "{error}");
        let error = Condition::compile("user.id == claims.sub").unwrap_err();
        assert!(error.contains("unknown variable `user`"), "{error}");
        assert!(
            Condition::compile("claims.authorization_details.exists(d, d.type == 'payment')")
                .is_ok(),
            "comprehension variables are bound"
        );
        assert!(Condition::compile("[1].all(x, y > x)").is_err());
    }

    #[test]
    fn only_true_lets_a_request_through() {
        let holds = [Condition::compile("claims.sub == request.params.user").unwrap()];
        let request = serde_json::json!({"params": {"user": "u1"}});
        assert_eq!(
            evaluate(
                &holds,
                &bindings(serde_json::json!({"sub": "u1"}), request.clone())
            ),
            Ok(())
        );
        assert_eq!(
            evaluate(
                &holds,
                &bindings(serde_json::json!({"sub": "u2"}), request.clone())
            ),
            Err(ConditionFailure::False(0))
        );
        let missing = [Condition::compile("claims.org == 'x'").unwrap()];
        assert!(matches!(
            evaluate(&missing, &bindings(serde_json::json!({}), request.clone())),
            Err(ConditionFailure::Error { index: 0, .. })
        ));
        let not_bool = [Condition::compile("claims.n").unwrap()];
        assert!(matches!(
            evaluate(&not_bool, &bindings(serde_json::json!({"n": 1}), request)),
            Err(ConditionFailure::Error { .. })
        ));
    }

    /// The deepest conditions `compile` accepts, of each shape, compile and
    /// evaluate on a worker thread's 2 MiB stack (finding 3: a 1,500-term sum
    /// overflowed it) even in this unoptimized build, whose frames are
    /// several times larger than a release build's.
    #[test]
    fn the_deepest_accepted_conditions_evaluate_on_a_worker_stack() {
        const STACK: usize = 2 * 1024 * 1024;
        let deepest = |shape: &dyn Fn(usize) -> String| {
            (1..cost::MAX_DEPTH)
                .map(shape)
                .take_while(|source| Condition::compile(source).is_ok())
                .last()
                .expect("a shallow one compiles")
        };
        let shapes: [&dyn Fn(usize) -> String; 4] = [
            &|n| format!("{} > 0", vec!["claims.n"; n].join(" + ")),
            &|n| format!("{}true", "!".repeat(n)),
            &|n| format!("{}1{} == 1", "[".repeat(n), "]".repeat(n)),
            &|n| {
                (0..n).fold("claims.n == 1".to_string(), |body, i| {
                    format!("[1].all(x{i}, {body})")
                })
            },
        ];
        let sources: Vec<String> = shapes.iter().map(|shape| deepest(shape)).collect();
        let evaluated = std::thread::Builder::new()
            .stack_size(STACK)
            .spawn(move || {
                let bindings = bindings(serde_json::json!({"n": 1}), serde_json::json!({}));
                for source in &sources {
                    let condition = [Condition::compile(source).expect("compiles here too")];
                    // Whatever the answer, it is one: no overflow.
                    let _ = evaluate(&condition, &bindings);
                }
                sources.len()
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(evaluated, 4);
    }

    #[test]
    fn uses_say_which_variables_to_build() {
        let c = Condition::compile("request.headers['x-org-id'] == claims.org_id").unwrap();
        assert_eq!(
            c.uses(),
            Uses {
                claims: true,
                request: true,
                headers: true,
                token: false,
                actor: false
            }
        );
        assert!(
            !Condition::compile("request.params.user == 'a'")
                .unwrap()
                .uses()
                .headers
        );
    }
}
