"""RL core: Dirichlet / log-Gamma vs scipy, GAE vs a NumPy loop, the PPO loss vs hand-computed
values, learning on the contextual bandit (PPO and MAPPO, 3 seeds), determinism and NaN handling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from rlae_jax.rl.bandit import BanditConfig, rollout, train
from rlae_jax.rl.distributions import Dirichlet, LogGamma
from rlae_jax.rl.gae import generalized_advantages
from rlae_jax.rl.losses import LossConfig, normalize_advantages, ppo_loss
from rlae_jax.rl.networks import (
    AgentConfig,
    MultiAgentObs,
    make_agent,
    span_encoding,
    span_encoding_dim,
)
from rlae_jax.rl.ppo import PPOConfig, create_train_state, raise_if_nonfinite, update

# ---------------------------------------------------------------- distributions


@pytest.mark.parametrize("concentration", [[0.3, 1.0, 2.5], [5.0, 0.05, 0.7, 12.0], [1.0, 1.0]])
def test_dirichlet_matches_scipy(concentration):
    alpha = np.array(concentration)
    rng = np.random.default_rng(0)
    points = rng.dirichlet(np.full(len(alpha), 2.0), size=5)
    with jax.enable_x64(True):
        dist = Dirichlet(jnp.asarray(alpha))
        log_probs = np.asarray(dist.log_prob(jnp.asarray(points)))
        entropy = float(dist.entropy())
    expected = [scipy.stats.dirichlet.logpdf(p, alpha) for p in points]
    np.testing.assert_allclose(log_probs, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(entropy, scipy.stats.dirichlet.entropy(alpha), rtol=1e-5, atol=1e-5)


def test_dirichlet_float32_samples_have_finite_log_prob():
    dist = Dirichlet(jnp.array([[0.01, 0.01, 5.0]] * 256))
    samples = dist.sample(jax.random.key(0))
    np.testing.assert_allclose(np.sum(samples, -1), 1.0, rtol=1e-6)
    assert np.all(np.asarray(samples) >= 0.99e-6)
    assert np.all(np.isfinite(dist.log_prob(samples)))


def test_log_gamma_matches_scipy_and_induces_dirichlet():
    alpha = np.array([0.4, 1.5, 3.0])
    actions = np.array([[-2.0, 0.1, 1.2], [0.5, -0.3, 0.9]])
    with jax.enable_x64(True):
        dist = LogGamma(jnp.asarray(alpha))
        log_probs = np.asarray(dist.log_prob(jnp.asarray(actions)))
        entropy = np.asarray(dist.entropy())
    np.testing.assert_allclose(
        log_probs, scipy.stats.loggamma.logpdf(actions, alpha), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(entropy, scipy.stats.loggamma.entropy(alpha), rtol=1e-5, atol=1e-5)
    many = LogGamma(jnp.tile(jnp.asarray(alpha, jnp.float32), (20000, 1)))
    weights = many.weights(many.sample(jax.random.key(1)))
    # softmax of independent log-Gamma(alpha_i) draws is Dirichlet(alpha): compare the first two
    # moments
    np.testing.assert_allclose(np.mean(weights, 0), scipy.stats.dirichlet.mean(alpha), atol=0.01)
    np.testing.assert_allclose(np.var(weights, 0), scipy.stats.dirichlet.var(alpha), atol=0.005)


# ---------------------------------------------------------------- GAE


def gae_reference(rewards, values, dones, valid, last_value, gamma, lam):
    """Textbook backward loop per episode row; padding ends an episode like a done."""
    num_steps, batch = rewards.shape
    advantages = np.zeros_like(rewards)
    for b in range(batch):
        running = 0.0
        for t in reversed(range(num_steps)):
            if not valid[t, b]:
                running = 0.0
                continue
            ends_here = dones[t, b] or (t + 1 < num_steps and not valid[t + 1, b])
            if ends_here:
                next_value, running = 0.0, 0.0
            else:
                next_value = values[t + 1, b] if t + 1 < num_steps else last_value[b]
            delta = rewards[t, b] + gamma * next_value - values[t, b]
            running = delta + gamma * lam * running
            advantages[t, b] = running
    return advantages, advantages + values * valid


def test_gae_matches_numpy_loop():
    rng = np.random.default_rng(0)
    num_steps, batch = 7, 12
    rewards = rng.normal(size=(num_steps, batch))
    values = rng.normal(size=(num_steps, batch))
    last_value = rng.normal(size=batch)
    lengths = rng.integers(1, num_steps + 1, size=batch)
    lengths[:3] = num_steps  # full rows, some truncated (bootstrap from last_value)
    valid = np.arange(num_steps)[:, None] < lengths[None]
    dones = (rng.random((num_steps, batch)) < 0.25) & valid  # several episodes per row
    dones[lengths - 1, np.arange(batch)] |= np.arange(batch) >= 1  # row 0 may be truncated
    gamma, lam = 0.97, 0.9
    expected_adv, expected_ret = gae_reference(
        rewards, values, dones, valid, last_value, gamma, lam
    )
    with jax.enable_x64(True):
        advantages, returns = generalized_advantages(
            jnp.asarray(rewards),
            jnp.asarray(values),
            jnp.asarray(dones, jnp.float64),
            jnp.asarray(valid, jnp.float64),
            jnp.asarray(last_value),
            gamma,
            lam,
        )
    np.testing.assert_allclose(np.asarray(advantages), expected_adv, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(returns) * valid, expected_ret, atol=1e-6, rtol=0)
    assert np.all(np.asarray(advantages)[~valid] == 0.0)


# ---------------------------------------------------------------- loss (numbers worked out by hand)

E_HALF, E_MINUS_HALF = 1.6487212707001282, 0.6065306597126334  # exp(0.5), exp(-0.5)


def test_ppo_loss_hand_computed():
    config = LossConfig(
        clip_eps=0.2,
        value_clip_eps=0.2,
        value_coef=0.5,
        entropy_coef=0.01,
        normalize_advantages=False,
    )
    # the 4th step is padding: its huge numbers must not count
    loss, metrics = ppo_loss(
        log_probs=jnp.array([0.0, 0.5, -0.5, 3.0]),
        old_log_probs=jnp.zeros(4),
        advantages=jnp.array([1.0, 2.0, -1.0, 100.0]),
        values=jnp.array([1.0, 0.0, 2.0, 50.0]),
        old_values=jnp.array([0.5, 0.5, 0.5, 0.0]),
        returns=jnp.array([2.0, 1.0, 0.0, -50.0]),
        entropy=jnp.array([1.0, 2.0, 3.0, 99.0]),
        mask=jnp.array([1.0, 1.0, 1.0, 0.0]),
        config=config,
    )
    # ratios 1, e^0.5 = 1.6487, e^-0.5 = 0.6065; objectives min(rA, clip(r)A) = 1, 1.2*2 = 2.4,
    # 0.8*-1 = -0.8
    policy_loss = -(1.0 + 2.4 - 0.8) / 3  # -0.866667
    # clipped values 0.7, 0.3, 0.7; max squared errors max(1, 1.69), max(1, 0.49), max(4, 0.49)
    value_loss = 0.5 * (1.69 + 1.0 + 4.0) / 3  # 1.115
    entropy = 2.0
    total = policy_loss + 0.5 * value_loss - 0.01 * entropy  # -0.329167
    approx_kl = ((E_HALF - 1 - 0.5) + (E_MINUS_HALF - 1 + 0.5)) / 3  # 0.085084
    np.testing.assert_allclose(metrics["policy_loss"], policy_loss, rtol=1e-6)
    np.testing.assert_allclose(metrics["value_loss"], value_loss, rtol=1e-6)
    np.testing.assert_allclose(metrics["entropy"], entropy, rtol=1e-6)
    np.testing.assert_allclose(loss, total, rtol=1e-5)
    np.testing.assert_allclose(metrics["approx_kl"], approx_kl, rtol=1e-5)
    np.testing.assert_allclose(metrics["clip_frac"], 2 / 3, rtol=1e-6)


def test_ppo_loss_per_agent_clipping():
    config = LossConfig(clip_eps=0.2, value_coef=0.0, entropy_coef=0.0, normalize_advantages=False)
    _, metrics = ppo_loss(
        log_probs=jnp.array([[0.5, 0.0], [0.0, -0.5]]),  # [M=2, N=2]
        old_log_probs=jnp.zeros((2, 2)),
        advantages=jnp.array([1.0, -1.0]),
        values=jnp.zeros(2),
        old_values=jnp.zeros(2),
        returns=jnp.zeros(2),
        entropy=jnp.zeros(2),
        mask=jnp.ones(2),
        config=config,
    )
    # per agent: min(1.6487, 1.2) = 1.2, 1, -1, min(-0.6065, -0.8) = -0.8 -> mean 0.1
    np.testing.assert_allclose(metrics["policy_loss"], -0.1, rtol=1e-6)
    np.testing.assert_allclose(metrics["clip_frac"], 0.5, rtol=1e-6)


def test_masked_advantage_normalisation():
    normalized = normalize_advantages(
        jnp.array([1.0, 2.0, 3.0, 100.0]), jnp.array([1.0, 1.0, 1.0, 0.0])
    )
    # mean 2, population std sqrt(2/3) = 0.816497 over the three valid entries
    np.testing.assert_allclose(normalized[:3], [-1.2247449, 0.0, 1.2247449], rtol=1e-5)


# ---------------------------------------------------------------- networks

BANDIT = BanditConfig(num_members=3, max_spans=3, noise_dims=2, batch_size=64)


def agent_config(kind, shared_actor=True):
    return AgentConfig(
        kind=kind,
        num_members=BANDIT.num_members,
        obs_dim=BANDIT.obs_dim,
        agent_obs_dim=BANDIT.obs_dim,
        hidden_sizes=(32,),
        span_horizon=BANDIT.max_spans,
        shared_actor=shared_actor,  # horizon: episode length
    )


def test_span_encoding_is_bounded_and_tells_spans_apart():
    """A function of the index with a width fixed by the horizon: any number of spans fits."""
    encoded = np.asarray(span_encoding(jnp.arange(128), 32))
    assert encoded.shape == (128, span_encoding_dim(32)) and np.all(np.abs(encoded) <= 1.0 + 1e-6)
    np.testing.assert_array_equal(encoded[:, :32].argmax(-1), np.minimum(np.arange(128), 31))
    np.testing.assert_allclose(encoded[:, -1], np.minimum(np.arange(128), 32) / 32)
    distances = np.linalg.norm(encoded[:, None] - encoded[None], axis=-1) + np.eye(128)
    assert distances.min() > 1e-2  # spans past the horizon still differ (sin / cos)


@pytest.mark.parametrize("shared_actor", [True, False])
def test_mappo_agent_shapes(shared_actor):
    agent = make_agent(agent_config("mappo", shared_actor), jax.random.key(0))
    obs = MultiAgentObs(
        state=jnp.ones((5, BANDIT.obs_dim)), agent_obs=jnp.ones((5, 3, BANDIT.obs_dim))
    )
    span_index = jnp.arange(5)  # past the bandit's 3 spans: the encoding is a function of the index
    actions, log_probs, values = agent.act(obs, span_index, jax.random.key(1))
    assert actions.shape == log_probs.shape == (5, 3) and values.shape == (5,)
    np.testing.assert_allclose(np.sum(agent.weights(actions), -1), 1.0, rtol=1e-6)
    new_log_probs, entropy, _ = agent.evaluate(obs, span_index, actions)
    np.testing.assert_allclose(new_log_probs, log_probs, rtol=1e-6)
    assert entropy.shape == (5,)
    if (
        not shared_actor
    ):  # identical inputs, different parameters per agent -> different concentrations
        concentrations = agent.concentrations(obs.agent_obs, span_index)
        assert not np.allclose(concentrations[:, 0], concentrations[:, 1])


# ---------------------------------------------------------------- learning on the bandit

NUM_UPDATES = 200
PPO = PPOConfig(
    num_epochs=4,
    num_minibatches=2,
    learning_rate=1e-2,
    final_lr_fraction=0.1,
    total_updates=NUM_UPDATES,
)


@functools.cache
def compiled_train(kind):
    """One jitted training run per agent kind as a function of the seed key (compiled once)."""
    return jax.jit(
        functools.partial(
            train,
            agent_config=agent_config(kind),
            ppo_config=PPO,
            bandit_config=BANDIT,
            num_updates=NUM_UPDATES,
        )
    )


@pytest.mark.parametrize("kind", ["ppo", "mappo"])
def test_agent_reaches_90_percent_of_optimal_return(kind):
    runs = [compiled_train(kind)(jax.random.key(seed))[1] for seed in range(3)]
    metrics = jax.tree.map(lambda *seeds: np.stack(seeds), *jax.device_get(runs))
    final_mean_policy = np.mean(metrics["mean_policy_return"][:, -10:], axis=1)
    final_sampled = np.mean(metrics["return"][:, -10:], axis=1)
    print(
        f"{kind}: after {NUM_UPDATES} updates, mean-policy return {final_mean_policy}, sampled "
        f"{final_sampled}"
    )
    assert not np.any(metrics["nonfinite"])
    assert np.all(final_mean_policy >= 0.9), final_mean_policy
    assert np.all(final_sampled >= 0.9), final_sampled


def test_same_seed_same_metrics():
    first = jax.device_get(compiled_train("mappo")(jax.random.key(7))[1])
    second = jax.device_get(compiled_train("mappo")(jax.random.key(7))[1])
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_nan_reward_is_flagged_and_skipped():
    agent = make_agent(agent_config("ppo"), jax.random.key(0))
    train_state = create_train_state(agent, PPO, jax.random.key(1))
    transitions, _ = rollout(train_state.graphdef, train_state.params, jax.random.key(2), BANDIT)
    transitions = transitions.replace(rewards=transitions.rewards.at[1, 5].set(jnp.nan))
    new_state, metrics = jax.jit(update)(train_state, transitions)
    assert bool(metrics["nonfinite"])
    assert int(metrics["skipped_minibatches"]) == PPO.num_epochs * PPO.num_minibatches
    for old, new in zip(jax.tree.leaves(train_state.params), jax.tree.leaves(new_state.params)):
        np.testing.assert_array_equal(old, new)
    with pytest.raises(FloatingPointError, match="update 7"):
        raise_if_nonfinite(metrics, update_index=7)
