//! The cost of a `when:` condition, known when the policy loads (DESIGN.md
//! §8, "Bounded conditions").
//!
//! Modelled on Kubernetes' CEL cost estimator (cel-go `checker/cost.go`):
//! every value a condition can see has a largest possible size: the largest
//! claims and request scopegate evaluates conditions on ([`Size::CLAIMS`],
//! [`Size::REQUEST`]; a Check whose values are larger is denied unevaluated,
//! see [`fits`]); a
//! comprehension (`all`, `exists`, `exists_one`, `map`, `filter`) costs its
//! range's largest size times its body's cost, so nesting multiplies; string
//! operations cost by length. The estimate is an upper bound: a condition
//! whose estimate is over [`BUDGET`] is refused, so no accepted condition can
//! take more than about a millisecond on any input (see `benches/conditions.rs`).
//!
//! The shape is bounded too: at most [`MAX_SOURCE_BYTES`] of source and
//! [`MAX_DEPTH`] levels of nesting, so evaluating (a recursive walk of the
//! expression) never comes near the end of a worker thread's 2 MiB stack.

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, operators};

use cel::Value;

/// The most cost units one rule's conditions may add up to. One unit is
/// about one step of the CEL interpreter; the worst accepted conditions take
/// well under 1 ms (measured in `benches/conditions.rs` and recorded in
/// docs/performance.md).
pub const BUDGET: u64 = 16_000;

/// Conditions estimated above this are evaluated off the request workers, one
/// at a time per policy (so a tenant's costly conditions queue behind each
/// other, not in front of another tenant's Checks); cheaper ones inline.
pub const INLINE_COST: u64 = 4_000;

/// The longest condition source, as the CRD's schema also says.
pub const MAX_SOURCE_BYTES: usize = 2_048;

/// The deepest nesting of brackets, parentheses (calls included) and `?:`
/// in a condition's source: the parser recurses on them.
pub const MAX_NESTING: u16 = 8;

/// The deepest nesting of a condition's expression tree (`a + b + c` nests
/// one level per `+`).
pub const MAX_DEPTH: usize = 32;

/// The most entries (list elements and map fields, at every level together)
/// of the claims a rule's conditions read (and of `token`, and of `actor`).
/// A token is at most 16 KiB; conditions are evaluated only on claims within
/// this and [`MAX_CLAIMS_BYTES`]: a larger token is denied (403
/// `condition_error`) on a rule with conditions, never evaluated.
pub const MAX_CLAIMS_ITEMS: u64 = 256;

/// The most string bytes of the claims a rule's conditions read.
pub const MAX_CLAIMS_BYTES: u64 = 8 * 1024;

/// The most bytes of `request` a condition is evaluated on: method, host,
/// path, captures and (when a condition reads them) header names and values
/// together. Envoy's default limit on request headers is 60 KiB.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// The most entries of `request` (its fields, headers and captures) a
/// condition is evaluated on; Envoy's default `max_headers_count` is 100.
pub const MAX_REQUEST_ITEMS: u64 = 160;

/// Units per entry to bind a variable (each list element and map field is
/// converted into the interpreter's values on every evaluation).
const BIND_COST_PER_ITEM: u64 = 4;

/// Bytes a cost unit reads or copies (memcmp, hashing, copying strings).
const BYTES_PER_UNIT: u64 = 16;

/// What compiling a `matches()` pattern costs (it is compiled on every
/// evaluation), in units.
const REGEX_COMPILE_COST: u64 = 4_000;

/// The largest compiled program a `matches()` pattern may have: bounds both
/// its compile time and its matching time per byte.
pub const REGEX_SIZE_LIMIT: usize = 64 * 1024;

/// An upper bound on the size of a value: the elements of every list and map
/// in it together, and the bytes of every string in it together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    /// List and map entries, at every level.
    pub items: u64,
    /// String and bytes contents.
    pub bytes: u64,
}

impl Size {
    const ZERO: Size = Size { items: 0, bytes: 0 };

    /// The largest claims conditions are evaluated on.
    pub const CLAIMS: Size = Size {
        items: MAX_CLAIMS_ITEMS,
        bytes: MAX_CLAIMS_BYTES,
    };

    /// The size of the largest `request` conditions are evaluated on.
    pub const REQUEST: Size = Size {
        items: MAX_REQUEST_ITEMS,
        bytes: MAX_REQUEST_BYTES,
    };

    fn plus(self, other: Size) -> Size {
        Size {
            items: self.items.saturating_add(other.items),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }

    fn times(self, n: u64) -> Size {
        Size {
            items: self.items.saturating_mul(n),
            bytes: self.bytes.saturating_mul(n),
        }
    }

    fn minus(self, other: Size) -> Size {
        Size {
            items: self.items.saturating_sub(other.items),
            bytes: self.bytes.saturating_sub(other.bytes),
        }
    }

    /// What reading (comparing, hashing, copying) all of it costs.
    fn scan(self) -> u64 {
        self.items
            .saturating_add(self.bytes.div_ceil(BYTES_PER_UNIT))
            .saturating_add(1)
    }
}

/// The largest size of each variable a condition can read.
fn variable_size(name: &str) -> Option<Size> {
    match name {
        // `token.scopes` and `token.client` come from the claims, as does
        // the `act` chain.
        "claims" | "token" | "actor" => Some(Size::CLAIMS),
        "request" => Some(Size::REQUEST),
        _ => None,
    }
}

/// Why a condition's shape or cost is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CostError {
    /// The source is longer than [`MAX_SOURCE_BYTES`].
    #[error("is {0} bytes long; a condition may have at most {MAX_SOURCE_BYTES}")]
    TooLong(usize),
    /// The expression nests deeper than [`MAX_DEPTH`].
    #[error(
        "nests more than {MAX_DEPTH} levels deep (each operator, call and comprehension is a level); split it into several `when` entries"
    )]
    TooDeep,
    /// Brackets, calls or `?:` nested deeper than [`MAX_NESTING`].
    #[error(
        "nests brackets, parentheses (calls too) or `?:` more than {MAX_NESTING} deep; split it into several `when` entries"
    )]
    TooNested,
    /// A function the condition environment does not have.
    #[error("calls `{0}`, which conditions do not have")]
    UnknownFunction(String),
    /// `matches()` with a pattern that is not a string literal.
    #[error("matches() needs a string literal pattern (it is compiled on every evaluation)")]
    PatternNotLiteral,
    /// A `matches()` pattern that does not compile within [`REGEX_SIZE_LIMIT`].
    #[error("the pattern {pattern:?} is not usable: {reason}")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// Why (syntax, or too large once compiled).
        reason: String,
    },
    /// The estimate is over the budget.
    #[error(
        "estimated cost {} exceeds the budget of {}; nest fewer comprehensions over different lists (a claims list may hold {MAX_CLAIMS_ITEMS} elements, request.headers {MAX_REQUEST_ITEMS})",
        thousands(*estimate), thousands(*budget)
    )]
    OverBudget {
        /// The estimated cost.
        estimate: u64,
        /// The budget it exceeds.
        budget: u64,
    },
}

/// `12345678` as `12,345,678`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Whether `value` is within `bound`, so that a condition costed for it may
/// be evaluated on it. Stops walking as soon as it is not.
pub fn fits(value: &Value, bound: Size) -> bool {
    let mut total = Size::ZERO;
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::List(list) => {
                total.items += list.len() as u64;
                stack.extend(list.iter());
            }
            Value::Map(map) => {
                total.items += map.map.len() as u64;
                for (key, value) in map.map.iter() {
                    if let cel::objects::Key::String(key) = key {
                        total.bytes += key.len() as u64;
                    }
                    stack.push(value);
                }
            }
            Value::String(s) => total.bytes += s.len() as u64,
            Value::Bytes(b) => total.bytes += b.len() as u64,
            _ => {}
        }
        if total.items > bound.items || total.bytes > bound.bytes {
            return false;
        }
    }
    true
}

/// Checks the source's length before it is parsed.
pub fn check_length(source: &str) -> Result<(), CostError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(CostError::TooLong(source.len()));
    }
    Ok(())
}

/// Checks the expression's depth without recursing (so a too-deep tree is
/// refused before anything walks it recursively).
pub fn check_depth(expr: &IdedExpr) -> Result<(), CostError> {
    let mut stack = vec![(expr, 1usize)];
    while let Some((expr, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(CostError::TooDeep);
        }
        for child in children(expr) {
            stack.push((child, depth + 1));
        }
    }
    Ok(())
}

/// The direct sub-expressions of `expr`.
fn children(expr: &IdedExpr) -> Vec<&IdedExpr> {
    match &expr.expr {
        Expr::Select(select) => vec![&select.operand],
        Expr::Call(call) => call
            .target
            .as_deref()
            .into_iter()
            .chain(&call.args)
            .collect(),
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => map
            .entries
            .iter()
            .flat_map(|e| entry_children(&e.expr))
            .collect(),
        Expr::Struct(object) => object
            .entries
            .iter()
            .flat_map(|e| entry_children(&e.expr))
            .collect(),
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

fn entry_children(entry: &EntryExpr) -> Vec<&IdedExpr> {
    match entry {
        EntryExpr::StructField(field) => vec![&field.value],
        EntryExpr::MapEntry(entry) => vec![&entry.key, &entry.value],
    }
}

/// The estimated cost of evaluating `expr` once on the largest inputs,
/// including binding the variables it reads. Call [`check_depth`] first.
pub fn estimate(expr: &IdedExpr) -> Result<u64, CostError> {
    let mut estimator = Estimator::default();
    let body = estimator.estimate(expr)?;
    // Binding converts each variable read into the interpreter's values.
    let binding = estimator
        .roots
        .iter()
        .filter_map(|name| variable_size(name))
        .fold(0u64, |sum, size| {
            sum.saturating_add(size.scan())
                .saturating_add(size.items.saturating_mul(BIND_COST_PER_ITEM - 1))
        });
    Ok(body.cost.saturating_add(binding))
}

/// The cost and result size of one sub-expression.
#[derive(Debug, Clone, Copy)]
struct Estimate {
    cost: u64,
    size: Size,
}

impl Estimate {
    fn unit(size: Size) -> Self {
        Estimate { cost: 1, size }
    }
}

#[derive(Default)]
struct Estimator {
    /// Comprehension variables in scope, innermost last.
    bound: Vec<(String, Size)>,
    /// The free variables read.
    roots: Vec<String>,
    /// Accumulators of `map`/`filter` comprehensions, which the interpreter
    /// appends to in place instead of copying.
    appended: Vec<String>,
}

impl Estimator {
    fn estimate(&mut self, expr: &IdedExpr) -> Result<Estimate, CostError> {
        match &expr.expr {
            Expr::Literal(literal) => Ok(Estimate::unit(literal_size(literal))),
            Expr::Ident(name) => Ok(Estimate::unit(self.ident_size(name))),
            Expr::Select(select) => {
                let operand = self.estimate(&select.operand)?;
                Ok(Estimate {
                    cost: operand.cost.saturating_add(1),
                    size: operand.size,
                })
            }
            Expr::List(list) => {
                let elements = self.all(list.elements.iter())?;
                Ok(Estimate {
                    cost: elements.cost.saturating_add(list.elements.len() as u64),
                    size: Size {
                        items: elements
                            .size
                            .items
                            .saturating_add(list.elements.len() as u64),
                        ..elements.size
                    },
                })
            }
            Expr::Map(map) => self.entries(map.entries.iter().map(|e| &e.expr)),
            Expr::Struct(object) => self.entries(object.entries.iter().map(|e| &e.expr)),
            Expr::Comprehension(c) => self.comprehension(c),
            Expr::Call(call) => self.call(call),
            Expr::Unspecified => Ok(Estimate::unit(Size::ZERO)),
        }
    }

    fn ident_size(&mut self, name: &str) -> Size {
        if let Some((_, size)) = self.bound.iter().rev().find(|(n, _)| n == name) {
            return *size;
        }
        if !self.roots.iter().any(|r| r == name) {
            self.roots.push(name.to_string());
        }
        // Unknown names do not compile (see `Condition::compile`).
        variable_size(name).unwrap_or(Size::CLAIMS)
    }

    /// The sum of the costs and sizes of `exprs`.
    fn all<'e>(
        &mut self,
        exprs: impl Iterator<Item = &'e IdedExpr>,
    ) -> Result<Estimate, CostError> {
        let mut sum = Estimate {
            cost: 1,
            size: Size::ZERO,
        };
        for expr in exprs {
            let one = self.estimate(expr)?;
            sum.cost = sum.cost.saturating_add(one.cost);
            sum.size = sum.size.plus(one.size);
        }
        Ok(sum)
    }

    fn entries<'e>(
        &mut self,
        entries: impl Iterator<Item = &'e EntryExpr>,
    ) -> Result<Estimate, CostError> {
        let entries: Vec<_> = entries.flat_map(entry_children).collect();
        let count = entries.len() as u64;
        let all = self.all(entries.into_iter())?;
        Ok(Estimate {
            // Each key is hashed.
            cost: all
                .cost
                .saturating_add(count)
                .saturating_add(all.size.scan()),
            size: Size {
                items: all.size.items.saturating_add(count),
                ..all.size
            },
        })
    }

    /// `range + init + N × (condition + step) + result`, with `N` the
    /// largest number of elements the range can have and the accumulator at
    /// the largest size it can grow to.
    ///
    /// The elements of a range share its size: a body whose cost grows with
    /// its element's size (`d.actions.exists(…)`) costs, over all elements,
    /// at most `N` times its cost on an empty element plus its cost on one
    /// element as large as the whole range (costs are polynomials with
    /// non-negative coefficients in the sizes, so they are superadditive).
    fn comprehension(
        &mut self,
        c: &cel::common::ast::ComprehensionExpr,
    ) -> Result<Estimate, CostError> {
        let range = self.estimate(&c.iter_range)?;
        let init = self.estimate(&c.accu_init)?;
        let iterations = range.size.items;
        let appends = appends_in_place(c);
        if appends {
            self.appended.push(c.accu_var.clone());
        }
        // How much the steps can grow the accumulator (users cannot write a
        // comprehension: the macros' steps add at most one element).
        let growth = |this: &mut Self, element: Size| {
            this.in_loop(c, element, init.size, |this| {
                Ok(this.estimate(&c.loop_step)?.size.minus(init.size))
            })
        };
        let accumulated = init
            .size
            .plus(growth(self, Size::ZERO)?.times(iterations))
            .plus(growth(self, range.size)?);
        let per_iteration = |this: &mut Self, element: Size| {
            this.in_loop(c, element, accumulated, |this| {
                let condition = this.estimate(&c.loop_cond)?;
                let step = this.estimate(&c.loop_step)?;
                Ok(condition.cost.saturating_add(step.cost).saturating_add(1))
            })
        };
        let loops = per_iteration(self, Size::ZERO)?
            .saturating_mul(iterations)
            .saturating_add(per_iteration(self, range.size)?);
        let result = self.in_loop(c, Size::ZERO, accumulated, |this| this.estimate(&c.result))?;
        if appends {
            self.appended.pop();
        }
        Ok(Estimate {
            cost: range
                .cost
                .saturating_add(init.cost)
                // Each element is copied into the loop variable.
                .saturating_add(range.size.scan())
                .saturating_add(loops)
                .saturating_add(result.cost),
            size: result.size,
        })
    }

    /// Runs `f` with the comprehension's variables bound: its element(s) at
    /// `element`, its accumulator at `accumulator`.
    fn in_loop<T>(
        &mut self,
        c: &cel::common::ast::ComprehensionExpr,
        element: Size,
        accumulator: Size,
        f: impl FnOnce(&mut Self) -> Result<T, CostError>,
    ) -> Result<T, CostError> {
        let scope = self.bound.len();
        self.bound.push((c.iter_var.clone(), element));
        if let Some(second) = &c.iter_var2 {
            self.bound.push((second.clone(), element));
        }
        self.bound.push((c.accu_var.clone(), accumulator));
        let result = f(self);
        self.bound.truncate(scope);
        result
    }

    fn call(&mut self, call: &cel::common::ast::CallExpr) -> Result<Estimate, CostError> {
        let name = call.func_name.as_str();
        if name == "matches" {
            check_pattern(call)?;
        }
        let target = match &call.target {
            Some(target) => Some(self.estimate(target)?),
            None => None,
        };
        let mut args = Vec::with_capacity(call.args.len() + 1);
        args.extend(target);
        for arg in &call.args {
            args.push(self.estimate(arg)?);
        }
        let evaluated = args.iter().fold(1u64, |sum, a| sum.saturating_add(a.cost));
        let size = |i: usize| args.get(i).map_or(Size::ZERO, |a| a.size);
        let scans = args
            .iter()
            .fold(0u64, |sum, a| sum.saturating_add(a.size.scan()));
        let appends_to_accumulator = name == operators::ADD
            && matches!(call.args.first().map(|a| &a.expr), Some(Expr::Ident(n)) if self.appended.contains(n));
        let (work, result) = match name {
            operators::LOGICAL_AND
            | operators::LOGICAL_OR
            | operators::LOGICAL_NOT
            | operators::NOT_STRICTLY_FALSE
            | operators::SUBSTRACT
            | operators::MULTIPLY
            | operators::DIVIDE
            | operators::MODULO
            | operators::NEGATE
            | "hasValue"
            | "optional.none" => (1, Size::ZERO),
            operators::CONDITIONAL => (1, size(1).plus(size(2))),
            // `map`/`filter` append in place: the accumulator is not copied.
            operators::ADD if appends_to_accumulator => (size(1).scan(), size(0).plus(size(1))),
            operators::ADD => (scans, size(0).plus(size(1))),
            operators::EQUALS
            | operators::NOT_EQUALS
            | operators::LESS
            | operators::LESS_EQUALS
            | operators::GREATER
            | operators::GREATER_EQUALS
            | "contains"
            | "startsWith"
            | "endsWith"
            | "size"
            | "bool"
            | "int"
            | "uint"
            | "double"
            | "type" => (scans, Size::ZERO),
            // A number's text is at most 32 bytes.
            "string" | "bytes" | "dyn" => (
                scans,
                size(0).plus(Size {
                    items: 0,
                    bytes: 32,
                }),
            ),
            // A hash or position lookup; the element is within the container.
            operators::INDEX | operators::OPT_INDEX | operators::OPT_SELECT => {
                (size(1).scan(), size(0))
            }
            // Each element compared to the needle.
            operators::IN => (
                size(1)
                    .scan()
                    .saturating_add(size(1).items.saturating_mul(size(0).scan())),
                Size::ZERO,
            ),
            "optional.of" | "optional.ofNonZeroValue" | "value" => (1, size(0)),
            "or" | "orValue" => (1, size(0).plus(size(1))),
            "matches" => (REGEX_COMPILE_COST.saturating_add(scans), Size::ZERO),
            other => return Err(CostError::UnknownFunction(other.to_string())),
        };
        Ok(Estimate {
            cost: evaluated.saturating_add(work),
            size: result,
        })
    }
}

/// Whether the interpreter appends to the accumulator in place (the `map`
/// and `filter` macros: `@result + [x]`, maybe behind a `?:` guard).
fn appends_in_place(c: &cel::common::ast::ComprehensionExpr) -> bool {
    let is_accu = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(n) if *n == c.accu_var);
    let is_append = |e: &IdedExpr| match &e.expr {
        Expr::Call(call) if call.func_name == operators::ADD && call.target.is_none() => {
            matches!(call.args.as_slice(), [lhs, rhs] if is_accu(lhs) && matches!(rhs.expr, Expr::List(_)))
        }
        _ => false,
    };
    let empty_init = matches!(&c.accu_init.expr, Expr::List(list) if list.elements.is_empty());
    let step = match &c.loop_step.expr {
        Expr::Call(call) if call.func_name == operators::CONDITIONAL && call.target.is_none() => {
            matches!(call.args.as_slice(), [_, step, otherwise] if is_append(step) && is_accu(otherwise))
        }
        _ => is_append(&c.loop_step),
    };
    empty_init && step && is_accu(&c.result) && matches!(c.loop_cond.expr, Expr::Literal(_))
}

fn literal_size(literal: &LiteralValue) -> Size {
    let bytes = match literal {
        LiteralValue::String(s) => s.inner().len(),
        LiteralValue::Bytes(b) => b.inner().len(),
        _ => 0,
    };
    Size {
        items: 0,
        bytes: bytes as u64,
    }
}

/// A `matches()` pattern must be a string literal that compiles within
/// [`REGEX_SIZE_LIMIT`] (bounding its compile and match time).
fn check_pattern(call: &cel::common::ast::CallExpr) -> Result<(), CostError> {
    let Some(Expr::Literal(LiteralValue::String(pattern))) = call.args.last().map(|a| &a.expr)
    else {
        return Err(CostError::PatternNotLiteral);
    };
    regex::RegexBuilder::new(pattern.inner())
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(drop)
        .map_err(|e| CostError::BadPattern {
            pattern: pattern.inner().to_string(),
            reason: e
                .to_string()
                .lines()
                .last()
                .unwrap_or("invalid")
                .trim()
                .to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(source: &str) -> Result<u64, CostError> {
        let program = cel::Program::compile(source).unwrap();
        check_depth(program.expression())?;
        estimate(program.expression())
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
    }

    #[test]
    fn nested_comprehensions_multiply() {
        let one = cost("claims.a.all(x, x == 1)").unwrap();
        let two = cost("claims.a.all(x, claims.b.all(y, x == y))").unwrap();
        assert!(one > MAX_CLAIMS_ITEMS, "{one}");
        assert!(two > one * MAX_CLAIMS_ITEMS / 2, "{one} {two}");
        assert!(one <= BUDGET, "one comprehension over claims fits: {one}");
        assert!(two > BUDGET);
    }

    #[test]
    fn literal_lists_count_their_length_and_macros_their_growth() {
        let small = cost("[1, 2, 3].all(x, x > 0)").unwrap();
        assert!(small < 100, "{small}");
        // `map` builds a list as long as its range; iterating it again
        // costs that much.
        let mapped = cost("claims.a.map(x, x).all(y, y == 1)").unwrap();
        assert!(mapped > 2 * MAX_CLAIMS_ITEMS, "{mapped}");
        // The finding's eight nested `.all()` over ten-element lists.
        let ten = "[0,1,2,3,4,5,6,7,8,9]";
        let nested = (0..8).fold("true".to_string(), |body, i| {
            format!("{ten}.all(x{i}, {body})")
        });
        assert!(cost(&nested).is_ok_and(|c| c > BUDGET));
    }

    #[test]
    fn depth_is_bounded_before_any_recursive_walk() {
        let deep = vec!["1"; 1_000].join(" + ");
        let program = cel::Program::compile(&deep).unwrap();
        assert_eq!(check_depth(program.expression()), Err(CostError::TooDeep));
        let shallow = vec!["1"; MAX_DEPTH / 2].join(" + ");
        let program = cel::Program::compile(&shallow).unwrap();
        assert_eq!(check_depth(program.expression()), Ok(()));
    }

    #[test]
    fn unknown_functions_and_dynamic_patterns_are_refused() {
        assert_eq!(
            cost("claims.sub.lowerAscii() == 'a'"),
            Err(CostError::UnknownFunction("lowerAscii".into()))
        );
        assert_eq!(
            cost("claims.sub.matches(claims.pattern)"),
            Err(CostError::PatternNotLiteral)
        );
        assert!(matches!(
            cost("claims.sub.matches('(')"),
            Err(CostError::BadPattern { .. })
        ));
        assert!(matches!(
            cost(r"claims.sub.matches('\\w{1000}\\w{1000}')"),
            Err(CostError::BadPattern { .. })
        ));
        assert!(cost("claims.sub.matches('^auth0[|][a-z0-9]+$')").is_ok());
    }
}
