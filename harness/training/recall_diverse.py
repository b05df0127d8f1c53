"""Diverse recall dialogues: many wordings, value formats and lengths, held out by template family.

The one-fact curriculum (``synthetic.py`` with one item and no small talk) taught the shipped adapters to recall
a value only in the few sentences it was stated and asked in; on independently written dialogues they name it
almost never. This generator varies everything that is not the skill itself, so what stays constant is "a value
was stated once somewhere in the history; the question asks for it":

* 38 kinds of personal fact, each with two noun-phrase paraphrases and its own wording;
* statements and questions drawn from named template families (generic frames around a noun phrase, and two
  families of fact-specific sentences);
* six value formats: 3-8 digit numbers, letter-digit codes, names, places, dates (five surface forms), titles;
* 1-4 facts per dialogue, one asked, the others distractors (often of the same format);
* small talk padding the history to a length drawn from ``history_tokens`` (about 100-1,000 SmolLM2 tokens).

**Held out by family, not by instance.** ``heldout_statement_families`` and ``heldout_question_families`` never
occur in a training dialogue. A held-out dialogue states its asked fact in a held-out statement family and asks
it in a held-out question family (its distractors use training families), so the held-out CE measures transfer
to unseen wording rather than to unseen values. Every conversation says which side it is on in
``metadata["heldout"]``, which :func:`harness.training.data.split_episodes` honours instead of its hash split.

Dialogue ``(split, i)`` depends only on ``(seed, split, i)`` and the settings: asking for more dialogues never
changes the earlier ones. Small talk and acknowledgements hold no digits and no pool value, and values are
drawn so that none contains another, so the asked value is stated exactly once in the history (checked on
every dialogue) and never in the question.

The tables were written for this module. They share no 20-character stretch with the evaluation dialogues of
``tasks/recall_oot/`` and no value with its pools, and cover different facts
(``tests/training/test_recall_diverse.py``).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Sequence

from harness.errors import ConfigError
from harness.training.episodes import Conversation
from harness.training.sources import Source, stable_hash

GENERATOR_VERSION = 1
KINDS = ("digits", "code", "person", "place", "date", "phrase")


@dataclass(frozen=True)
class Fact:
    """A kind of personal fact. ``nouns`` read in "<noun> is <value>" and "What is <noun>?"; ``said`` and
    ``asked`` are the fact's own sentences, index 0 of the ``topic_a`` family and index 1 of ``topic_b``."""

    key: str
    kind: str
    nouns: tuple[str, str]
    said: tuple[str, str]
    asked: tuple[str, str]
    digits: tuple[int, int] = (3, 8)


FACTS: tuple[Fact, ...] = (
    # ---------------------------------------------------------------- numbers
    Fact("gym_locker", "digits", ("the number of my gym locker", "my locker number at the gym"),
         ("The gym gave me a new locker this month, number {v}.",
          "After swimming I never know where my things are, so for later: my gym locker is number {v}."),
         ("Which locker is mine at the gym?",
          "I'm dripping wet in the changing room and can't find my locker. Which number was it?"), (3, 4)),
    Fact("home_policy", "digits", ("my home insurance policy number", "the policy number for the house insurance"),
         ("The insurer finally sent the paperwork, and the home policy number on it is {v}.",
          "House insurance is sorted at last: policy {v}, renewing every autumn."),
         ("What's the policy number on my home insurance?",
          "The insurer's hotline asks which policy I hold. What number do I give them?"), (6, 8)),
    Fact("staff_id", "digits", ("my staff ID number", "the employee number on my work badge"),
         ("HR set me up today and my staff ID is {v}.",
          "My new work badge arrived with the employee number {v} printed under my photo."),
         ("What is my staff ID at work?",
          "Security at the office wants my employee number. What's on my badge?"), (5, 7)),
    Fact("prescription", "digits", ("my prescription number at the pharmacy", "the number of my repeat prescription"),
         ("The chemist said to quote prescription number {v} when I pick up my tablets.",
          "My repeat prescription is set up, and the pharmacy filed it under {v}."),
         ("Which prescription number should I quote at the pharmacy?",
          "I'm at the chemist's counter to collect my tablets. What number do they need?"), (6, 8)),
    Fact("work_bus", "digits", ("the bus route I take to the new office", "the number of my bus to work"),
         ("To get to the new office I take the number {v} bus.",
          "Turns out the quickest way to work is route {v}, straight from the corner shop."),
         ("Which bus do I take to work?",
          "I'm at the stop and several buses are pulling in. Which one goes to my office?"), (3, 3)),
    Fact("extension", "digits", ("my desk phone extension", "the extension of my work phone"),
         ("If anyone needs to reach me at work, my extension is {v}.",
          "They moved me to a new desk, and the phone there answers on extension {v}."),
         ("What's my extension at work?",
          "Mum wants to call my desk directly. Which extension should she dial?"), (4, 5)),
    Fact("raffle", "digits", ("my raffle ticket number", "the number on my ticket for the school raffle"),
         ("I bought a ticket for the school raffle and it's number {v}.",
          "Fingers crossed for the raffle draw on Friday; my ticket reads {v}."),
         ("What number is my raffle ticket?",
          "They're reading out the winning raffle numbers. Which one is mine?"), (3, 5)),
    Fact("lens_order", "digits", ("the order number for my camera lens", "my lens order number"),
         ("The camera shop confirmed my lens order, number {v}.",
          "My new lens is on its way, and the shop's order number for it is {v}."),
         ("What is the order number for my camera lens?",
          "The camera shop is on the line asking about my lens. Which order number do I give?"), (6, 8)),
    # ---------------------------------------------------------------- codes with letters
    Fact("rail_booking", "code", ("the confirmation code for my train tickets", "my rail booking code"),
         ("My train tickets are booked, confirmation code {v}.",
          "To print the rail tickets from the machine I'll need the code {v}."),
         ("What's the confirmation code for my train tickets?",
          "I'm at the ticket machine in the station. What code do I type in?")),
    Fact("claim", "code", ("the reference for my insurance claim", "my claim reference"),
         ("The insurer opened a claim for the broken window under reference {v}.",
          "Every letter about the window claim has {v} printed at the top."),
         ("What's the reference on my insurance claim?",
          "The loss adjuster is asking which claim this is about. What do I tell him?")),
    Fact("voucher", "code", ("the voucher code for the bookshop", "my bookshop gift voucher code"),
         ("My colleagues gave me a bookshop voucher, code {v}.",
          "The gift card for the bookshop only works online with the code {v}."),
         ("What's the code on my bookshop voucher?",
          "I'm checking out at the online bookshop and it wants the voucher code. What was it?")),
    Fact("bike_frame", "code", ("the frame number of my bicycle", "my bike's serial number"),
         ("I registered my bike with the police, frame number {v}.",
          "Stamped underneath my bike, right by the pedals, is the serial {v}."),
         ("What's the frame number of my bicycle?",
          "Someone found a bike that looks like mine. Which serial should it have?")),
    Fact("paint", "code", ("the code of the paint colour we chose for the kitchen", "the kitchen paint code"),
         ("We settled on a paint colour for the kitchen, shade code {v}.",
          "At the hardware store they mixed the kitchen paint for us from the code {v}."),
         ("What code was the kitchen paint colour?",
          "We ran out of kitchen paint halfway through. What code do I ask the shop to mix?")),
    Fact("permit", "code", ("my parking permit number", "the number on my residents' parking permit"),
         ("The council issued my residents' parking permit, number {v}.",
          "There's a new sticker on my windscreen now: parking permit {v}."),
         ("What's my parking permit number?",
          "A warden wants me to confirm my permit. Which number is it?")),
    # ---------------------------------------------------------------- people
    Fact("colleague", "person", ("the name of my new colleague", "my new colleague's name"),
         ("A new colleague joined our team today; her name is {v}.",
          "I shared a lunch table with the new hire, {v}, and we got on really well."),
         ("What's my new colleague called?",
          "I want to invite the new person on my team to lunch again. What was her name?")),
    Fact("landlady", "person", ("the name of my landlady", "my landlady's name"),
         ("My landlady is {v}, and she lives on the top floor.",
          "The flat belongs to a lady named {v}, who collects the rent in person."),
         ("What is my landlady's name?",
          "The radiator is leaking and I should tell the owner of the flat. Who is she?")),
    Fact("class_teacher", "person", ("the name of my daughter's teacher", "my daughter's class teacher"),
         ("My daughter's new class teacher is called {v}.",
          "At parents' evening I met {v}, who teaches my daughter this year."),
         ("Who is my daughter's teacher?",
          "I need to write a note to school about my daughter. Whom do I address it to?")),
    Fact("physio", "person", ("the name of my physiotherapist", "my physio's name"),
         ("My physiotherapist is {v}, and she gave me a sheet of exercises.",
          "Twice a week I see a physio called {v} about my shoulder."),
         ("What's my physiotherapist called?",
          "I need to cancel my shoulder session. Which therapist should I ask for?")),
    Fact("plant_sitter", "person",
         ("the neighbour who waters my plants", "the name of the neighbour watering my plants"),
         ("While I'm away, my neighbour {v} will water the plants.",
          "I left a spare key with {v} next door so the plants get watered."),
         ("Who is watering my plants while I'm away?",
          "I want to bring back a gift for whoever looked after my plants. Who was it?")),
    Fact("niece", "person", ("the name of my new niece", "my baby niece's name"),
         ("My brother's baby girl was born last night, and they called her {v}.",
          "We finally know what my niece is called: {v}."),
         ("What's my niece called?",
          "I'm writing the card for the new baby in the family. What name goes on it?")),
    Fact("accountant", "person", ("the name of my accountant", "my accountant's name"),
         ("My accountant is called {v}, and she does my taxes every spring.",
          "I hired an accountant, {v}, to sort out the tax return."),
         ("Who is my accountant?",
          "The tax office asks who prepared my return. Whose name do I give?")),
    # ---------------------------------------------------------------- places
    Fact("cousin_city", "place", ("the city my cousin lives in now", "my cousin's new home town"),
         ("My cousin has moved to {v} for work.",
          "My cousin packed everything into a car and drove all the way to {v} to start again."),
         ("Where did my cousin move to?",
          "I'd like to visit my cousin in the new place. Which city should I travel to?")),
    Fact("birthplace", "place", ("the town where I was born", "my birthplace"),
         ("I was born in {v}, though we left when I was small.",
          "My birth certificate says {v}, a town I barely remember."),
         ("Where was I born?",
          "A form wants my place of birth. What should I write?")),
    Fact("summer_trip", "place", ("our holiday destination this summer", "the place we booked for the summer holiday"),
         ("We've booked our summer holiday in {v}.",
          "This year the family chose {v} for the summer trip."),
         ("Where are we going on holiday this summer?",
          "My friend wants to know where we'll spend the summer. What do I tell her?")),
    Fact("friend_city", "place", ("the city my best friend lives in", "my best friend's city"),
         ("My best friend lives in {v} these days.",
          "Whenever I visit my best friend I fly to {v}."),
         ("Which city does my best friend live in?",
          "I want to surprise my best friend with a visit. Where do I need to go?")),
    Fact("reunion", "place", ("the town hosting the family reunion", "the place of our family reunion"),
         ("The family reunion will be in {v} this year.",
          "My aunt has rented a big house in {v} so the whole family can get together."),
         ("Where is the family reunion?",
          "I'm booking a train for the big family get-together. Which town am I going to?")),
    Fact("retirement", "place", ("the town my parents are retiring to", "my parents' retirement town"),
         ("My parents have decided to retire to {v}.",
          "Mum and Dad bought a little cottage in {v} for their retirement."),
         ("Where are my parents retiring?",
          "I should send my parents a housewarming present. To which town?")),
    # ---------------------------------------------------------------- dates
    Fact("lease", "date", ("the day my lease ends", "the end date of my rental contract"),
         ("My lease runs until {v}, so I need to find a new place before then.",
          "The rental contract ends on {v}, and I haven't decided whether to renew."),
         ("When does my lease end?",
          "If I don't renew, by what date do I have to be out of the flat?")),
    Fact("nephew_birthday", "date", ("my nephew's birthday", "the date of my nephew's birthday"),
         ("My nephew's birthday is {v}.",
          "Note for the calendar: my nephew turns a year older on {v}."),
         ("When is my nephew's birthday?",
          "I'm ordering a present for my nephew. By which day should it arrive?")),
    Fact("graduation", "date", ("the date of my friend's graduation", "my friend's graduation day"),
         ("The graduation ceremony for my friend is on {v}.",
          "My friend finally finishes university, and the ceremony is set for {v}."),
         ("When is my friend's graduation?",
          "I want to book a day off for my friend's ceremony. Which day?")),
    Fact("job_start", "date", ("the day I start my new job", "my first day at the new job"),
         ("I start the new job on {v}.",
          "The contract is signed and my first day at the new company is {v}."),
         ("When do I start my new job?",
          "My old boss wants to know how long I'm around. When is my first day at the new place?")),
    Fact("school_play", "date", ("the date of the school play", "the day of my son's school play"),
         ("My son's school play is on {v}.",
          "The drama club puts on its play on {v}, and my son has a speaking part."),
         ("When is the school play?",
          "Grandpa wants to come and watch my son on stage. Which day should he keep free?")),
    # ---------------------------------------------------------------- titles and short phrases
    Fact("book_club", "phrase", ("the next book for our book club", "the title of the book club's next read"),
         ("Our book club picked {v} for next month.",
          "Next month everyone in the reading group has to finish {v}."),
         ("Which book is the book club reading next?",
          "I'm at the library. What's the title I should borrow for the reading group?")),
    Fact("cafe", "phrase", ("the name of the café where we meet", "our café's name"),
         ("Let's meet at the café called {v}, near the square.",
          "My friends and I always sit in a little café named {v}."),
         ("What's the café where we meet called?",
          "I want to look up the opening hours of our usual café. What's its name?")),
    Fact("podcast", "phrase", ("the name of my friend's podcast", "my friend's podcast"),
         ("My friend started a podcast called {v}.",
          "Search for {v} if you want to hear my friend's new podcast."),
         ("What's my friend's podcast called?",
          "I want to recommend my friend's show to a colleague. What should she search for?")),
    Fact("quiz_team", "phrase", ("the name of our pub quiz team", "our quiz team's name"),
         ("Our pub quiz team is registered as {v}.",
          "We won the quiz last night playing under the name {v}."),
         ("What's our quiz team called?",
          "The quiz host needs our team name on the answer sheet. What do I write?")),
    Fact("trail", "phrase", ("the hiking trail we want to do", "the name of the trail we're planning to hike"),
         ("The hike we're planning follows a path called {v}.",
          "Next weekend we want to walk the trail known as {v}, along the ridge."),
         ("Which trail are we hiking?",
          "I'm downloading the map for our walk. Which trail should I search for?")),
    Fact("robot_vacuum", "phrase", ("the name the kids gave the robot vacuum", "the robot vacuum's nickname"),
         ("The kids have named our robot vacuum {v}.",
          "According to the children, our robot vacuum now answers to {v}."),
         ("What did the kids name the robot vacuum?",
          "The kids are asking where their little cleaning robot is. What do they call it?")),
)
FACT_BY_KEY = {f.key: f for f in FACTS}

# Generic frames around a fact's noun phrase ({np}; {NP} capitalised) and its value ({v}). ``topic_a`` and
# ``topic_b`` are the facts' own sentences (Fact.said / Fact.asked), not frames.
STATEMENT_FAMILIES: dict[str, tuple[str, ...]] = {
    "plain": ("{NP} is {v}.", "Just so you know, {np} is {v}.", "For the record, {np} is {v}."),
    "request": ("Please remember this for me: {np} is {v}.", "Can you keep track of something? {NP} is {v}.",
                "I'd like you to remember that {np} is {v}."),
    "note": ("Note for later: {np} is {v}.", "Writing this down here. {NP}: {v}.",
             "Putting it in our chat so I don't lose it: {np} is {v}."),
    "aside": ("Oh, by the way, {np} is {v}.", "Unrelated, but {np} is {v}.", "Totally different topic: {np} is {v}."),
    "news": ("Starting this week, {np} is {v}.", "As of today, {np} is {v}.", "It's official now: {np} is {v}."),
    "preamble": ("What a morning, the washing machine leaked all over the floor. Anyway, {np} is {v}.",
                 "I've been running errands all day. One useful thing came out of it: {np} is {v}.",
                 "Sorry for all the messages today! Here's another one: {np} is {v}."),
    "reported": ("The woman at the front desk told me that {np} is {v}.",
                 "I got an email this afternoon saying that {np} is {v}.",
                 "According to the letter that arrived today, {np} is {v}."),
    "value_first": ("Here's one for you: {v}. That's {np}.", "Keep {v} in mind, because that's {np}.",
                    "The answer to something I'll ask you later is {v}: it's {np}."),
    "topic_a": (),
    "topic_b": (),
}
QUESTION_FAMILIES: dict[str, tuple[str, ...]] = {
    "direct": ("What is {np}?", "What's {np}?"),
    "recall": ("What did I tell you {np} was?", "Do you remember what {np} is?"),
    "imperative": ("Tell me {np}, please.", "Give me {np} once more."),
    "check": ("Can you look up {np} for me?", "Could you check what {np} is?"),
    "terse": ("{NP}?", "{NP}, remind me?"),
    "forgot": ("I forgot {np}. Any help?", "My mind has gone completely blank. What is {np}?"),
    "indirect": ("I wonder what {np} was again.", "Didn't I mention {np} at some point? What was it exactly?"),
    "topic_a": (),
    "topic_b": (),
}
DEFAULT_HELDOUT_STATEMENT = ("reported", "value_first", "topic_b")
DEFAULT_HELDOUT_QUESTION = ("forgot", "indirect", "topic_b")

ANSWERS = ("It's {v}.", "{v}.", "You told me it's {v}.", "That's {v}.", "You said {v}.", "I have it down as {v}.",
           "It was {v}, going by what you told me.", "{v}, if I have your message right.")
# Replies to a stated fact: they never repeat the value, so the history states it once.
ACKNOWLEDGEMENTS = (
    "Noted, I'll keep that safe for you.", "Thanks, that's written down.", "Got it, I'll remember.",
    "All noted. Just ask when you need it.", "Right, I've made a note of that.", "Okay! Filed away.",
    "Sure thing, that's in my notes now.", "Understood, it's stored.", "Perfect, noted.",
    "Thanks for letting me know, I've saved it.", "Good, I'll keep track of it.", "Done, that's recorded.",
)

# ------------------------------------------------------------------------------------------ value pools
FIRST_NAMES = ("Annika", "Rosalind", "Teodor", "Kasimir", "Imogen", "Ruairi", "Lucinda", "Mirela", "Anneliese",
               "Florin", "Theodora", "Ciaran", "Sunniva", "Leocadia", "Radek", "Zuzana", "Bronwyn", "Eamon",
               "Hortense", "Magnus", "Ottavia", "Jolanda", "Severin", "Malachy", "Isadora", "Cornelius",
               "Petronella", "Aurelio", "Dagny", "Emrys", "Fenella", "Gottfried", "Honoria", "Jarvis", "Kirsten",
               "Lavinia", "Matthias", "Nerys", "Orla", "Pernille", "Quincy", "Rosamund", "Sigrun", "Thorvald",
               "Ulrike", "Vesna", "Winifred", "Ysolde", "Zenon")
SURNAMES = ("Lindqvist", "Abernathy", "Castellanos", "Dunmore", "Eriksen", "Fairweather", "Gallagher", "Hollis",
            "Iversen", "Jablonski", "Kowalczyk", "Lachance", "Moreau", "Nakamura", "Oyelaran", "Pendleton",
            "Quiroga", "Rasmussen", "Szabo", "Thornbury", "Vasquez", "Whitcombe")
TOWNS = ("Bamberg", "Coimbra", "Dubrovnik", "Eindhoven", "Faro", "Graz", "Heidelberg", "Innsbruck", "Jaipur",
         "Kilkenny", "Lindau", "Maastricht", "Nantes", "Odense", "Palermo", "Quimper", "Rennes", "Toulouse",
         "Uppsala", "Verona", "Wroclaw", "Yokohama", "Zaragoza", "Alicante", "Bilbao", "Durban", "Exeter",
         "Fremantle", "Hamelin", "Ithaca", "Jena", "Leuven", "Mendoza", "Napier", "Oviedo", "Perugia",
         "Queenstown", "Rouen", "Siena", "Trieste", "Valencia", "Windsor")
TITLE_WORDS = ("Amber", "Brass", "Copper", "Dappled", "Ember", "Feathered", "Gentle", "Hidden", "Indigo", "Lunar",
               "Midnight", "Paper", "Quiet", "Scarlet", "Twilight", "Humble", "Restless", "Woollen", "Cobalt",
               "Golden", "Northern")
TITLE_NOUNS = ("Heron", "Compass", "Lighthouse", "Meadow", "Orchard", "Sparrow", "Acorn", "Beacon", "Carousel",
               "Dragonfly", "Harp", "Inkwell", "Kite", "Magpie", "Nutmeg", "Quill", "Raven", "Saddle", "Tugboat",
               "Violin", "Willow", "Zeppelin")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
CODE_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # I and O read as digits

# ------------------------------------------------------------------------------------------ small talk
# (user, assistant) exchanges: no digits, no month, no name or place from the pools.
SMALL_TALK = (
    ("I got a puncture cycling home and had to push the bike the whole way.",
     "That's a tiring end to the day. A small repair kit and a mini pump under the saddle make the next one a "
     "ten-minute fix by the roadside."),
    ("I'm trying to learn to juggle with three balls.",
     "Start with one ball, tossing it from hand to hand at eye height, then add the second. The third comes "
     "much more easily once the rhythm of two feels automatic."),
    ("The crossword today defeated me completely.",
     "Some days the setter just thinks differently. Leaving it for an hour and coming back with fresh eyes "
     "often makes a stubborn clue fall into place."),
    ("There was a huge thunderstorm last night and the dog hid under the bed.",
     "Poor thing. A cosy den with a blanket over it and some calm background sound can help a nervous dog "
     "ride out the noise."),
    ("I've started listening to audiobooks on my commute.",
     "That's a great way to turn travel time into reading time. Mysteries and memoirs tend to work well, "
     "since they are easy to follow with half an ear."),
    ("Everyone says cold showers are good for you. Are they?",
     "Some people find them invigorating, and a short cold finish can wake you up. There's no need to force "
     "it, though; a warm shower is perfectly healthy too."),
    ("I want to make pizza dough from scratch this weekend.",
     "Flour, water, yeast, salt and a splash of oil are all you need. Letting the dough rest slowly in the "
     "fridge overnight gives it much more flavour."),
    ("We had a board game night and it ended in an argument about the rules.",
     "That's practically a tradition. Reading the rule that causes trouble out loud before you start can "
     "save a lot of debate later in the evening."),
    ("Is origami hard to pick up?",
     "The basic folds are simple, and a paper crane is a classic first goal. Square, thin paper makes it "
     "much easier than printer paper."),
    ("The sky was so clear tonight that I could see loads of stars.",
     "Lovely. If you let your eyes adjust in the dark for a while, far more stars appear, and a free sky map "
     "app can tell you what you're looking at."),
    ("I lose my keys at least twice a week.",
     "A bowl or hook right by the door, used every single time, fixes it for most people. Habit does the "
     "remembering for you."),
    ("Where do all the odd socks go?",
     "It's one of life's small mysteries. Usually they hide in the sleeves of jumpers or stick to the drum of "
     "the washing machine."),
    ("My friend gave me a big bag of plums and I'm thinking of making jam.",
     "Plums make a wonderful jam because they set easily. Warm, clean jars and a cold saucer to test the set "
     "are the main things to prepare."),
    ("I went ice skating for the first time in years and fell over a lot.",
     "Falling is part of it. Bending your knees a little more and keeping your weight forward makes you far "
     "steadier on the ice."),
    ("We spent the whole evening moving the furniture around the living room.",
     "A new layout can make a room feel brand new. It's also the perfect excuse to find everything that was "
     "lost under the sofa."),
    ("I can't whistle and it bothers me more than it should.",
     "It's a surprisingly tricky skill. Wetting your lips, making a small round opening and blowing gently "
     "while moving your tongue usually gets a first note out."),
    ("My friends want to go to karaoke and I'm terrified.",
     "Picking a song you know by heart helps, and singing alongside a friend makes it far less daunting. Most "
     "people there are cheering, not judging."),
    ("My partner snores so loudly that I end up on the sofa.",
     "That's hard on both of you. Sleeping on the side instead of the back often reduces snoring, and it may "
     "be worth mentioning to a doctor if it's constant."),
    ("I ordered the spiciest dish on the menu and regretted it instantly.",
     "Brave choice! Milk or yoghurt calms the burn far better than water, which just spreads the heat around."),
    ("I've had hiccups for what feels like ages.",
     "Sipping cold water slowly or holding your breath briefly helps many people. They almost always stop on "
     "their own before long."),
    ("Cleaning the windows always leaves streaks for me.",
     "Try doing it on a cloudy day, because sunshine dries the cleaner too fast. Newspaper or a microfibre "
     "cloth gives a clearer finish."),
    ("Ironing shirts takes me forever.",
     "Hanging them up straight from the wash removes most creases. Starting with the collar and cuffs, then "
     "the body, makes the rest go quicker."),
    ("We went to a museum of old clocks today.",
     "What an unusual place to visit. The mechanisms inside antique clocks are tiny works of art, and hearing "
     "them all tick at once must have been something."),
    ("I'm finally taking swimming lessons as an adult.",
     "Good for you. Adults often progress quickly because they understand the technique, and floating "
     "relaxed is half the battle."),
    ("My lemon tree has dropped almost all its leaves.",
     "Lemon trees dislike sudden changes. A bright spot away from draughts and watering only when the top of "
     "the soil is dry usually brings them back."),
    ("The fridge has started making a strange humming noise.",
     "Sometimes it just needs the coils at the back dusted, or the fridge levelled again. If the noise "
     "keeps getting louder, a repair visit is sensible."),
    ("I picked up my new glasses and everything looks too sharp.",
     "That's very common with a new prescription. Your eyes and brain usually adjust within a few days of "
     "wearing them all the time."),
    ("I got a haircut and I already regret it.",
     "Hair is forgiving; it grows back faster than it feels. A bit of styling product and a few days of "
     "getting used to it often change your mind."),
    ("I forgot sun cream at the beach and now I'm bright pink.",
     "Ouch. Cool showers, plenty of water and a gentle after-sun lotion help, and staying in the shade for "
     "a couple of days lets the skin recover."),
    ("I've taken up rollerblading along the river path.",
     "That sounds fun. Wrist guards and knee pads are worth it while you learn, since most falls land on the "
     "hands first."),
    ("There's a village fair on this weekend with a cake competition.",
     "Village fairs are charming. If you enter the competition, a simple cake done really well usually beats "
     "a fancy one that went wrong."),
    ("I tried to photograph the moon with my phone and it's just a white blob.",
     "Phones struggle with bright objects in the dark. Tapping on the moon and lowering the exposure brings "
     "out the craters much better."),
    ("I shrank my favourite wool jumper in the wash.",
     "That's so annoying. Soaking it in lukewarm water with hair conditioner and gently stretching it while "
     "damp can sometimes win back a little size."),
    ("I bought a calligraphy pen and my letters look wobbly.",
     "Everyone's do at first. Slow, steady strokes and practising single shapes over and over builds the "
     "control that makes letters look even."),
    ("We actually got a snow day and the whole street came out to play.",
     "Snow days are magical. Nothing brings neighbours together quite like a street full of snowmen and "
     "sledges."),
    ("My friend is going up in a hot air balloon for her birthday.",
     "What a memorable present. Early morning flights are usually the calmest, and the views over the "
     "countryside are supposed to be wonderful."),
    ("The zip on my coat broke right before the cold weather.",
     "Often the slider is just worn; a tailor can replace it without changing the whole zip, which is quick "
     "and cheap."),
    ("The queue at the post office went all the way out of the door.",
     "Lunchtime tends to be the busiest. Mid-morning or the last hour before closing is usually much quieter."),
    ("I want to try making candles as a hobby.",
     "Candle making is relaxing and the kits are inexpensive. Soy wax is easy to work with, and a few drops "
     "of essential oil add a nice scent."),
    ("We had a picnic and wasps ruined it.",
     "Wasps love sweet drinks and fruit. Keeping those covered, or setting a little dish of jam further away "
     "as a decoy, keeps them off your plates."),
    ("I'm dog-sitting for a friend and the dog won't stop following me around.",
     "That's a dog making sure you don't disappear too. A long walk and a chew toy usually help it settle "
     "down in a new routine."),
    ("I volunteered at the food bank this morning.",
     "That's a kind way to spend a morning. Sorting donations and packing parcels makes a real difference, "
     "and volunteers are always welcome back."),
    ("Our family group chat is out of control.",
     "Family chats do tend to multiply. Muting it for a while and catching up once a day keeps the peace "
     "without missing anything important."),
    ("The mosquitoes bit me all over last night.",
     "A fan in the bedroom helps, because mosquitoes are weak fliers. A cool compress calms the itching "
     "better than scratching."),
    ("I'm growing chillies on the windowsill for the first time.",
     "Chillies love warmth and sun, so a bright windowsill is ideal. Gently brushing the flowers with a soft "
     "brush helps them set fruit indoors."),
    ("My manager suggested we have walking meetings.",
     "They can be surprisingly productive. Fresh air and moving side by side make conversations feel more "
     "relaxed, as long as nobody needs to take notes."),
    ("What's the quickest way to peel garlic?",
     "Press each clove firmly with the flat of a knife; the skin splits and slides right off."),
    ("I joined a choir and I can't read music.",
     "Plenty of choir members can't at first. Listening to the recordings of your part at home and following "
     "the shape of the notes teaches you a lot quickly."),
    ("The weekend went by far too fast.",
     "Weekends always seem to. Keeping one small thing to look forward to on a weekday evening can make the "
     "week feel less long."),
    ("I'm thinking of taking a pottery class.",
     "Pottery is very absorbing. The wheel takes patience, but hand-building a bowl or a mug gives you "
     "something lovely to take home from the first session."),
    ("It's so windy today that my umbrella turned inside out.",
     "Windy rain is the worst for umbrellas. A hooded waterproof jacket is often the better choice on days "
     "like this."),
    ("I found an old box of photos in the attic.",
     "What a find. Scanning them is a nice rainy-day project, and family members usually love getting "
     "copies of the ones they're in."),
    ("My smoke alarm keeps beeping in the middle of the night.",
     "A single chirp every so often usually means the battery is low. Changing it, and testing the alarm "
     "afterwards, stops the beeping."),
    ("How do I stop my glasses steaming up when I wear a scarf?",
     "Tucking the scarf below your nose and pinching the nose bridge of a mask tightly sends your breath "
     "downwards instead of onto the lenses."),
    ("I've been getting into bird song recordings to fall asleep.",
     "Natural sounds are very soothing for many people. Setting a timer so the recording fades out after you "
     "drift off keeps it from waking you later."),
    ("My kid wants a pet snake.",
     "Snakes can be calm and easy pets, but they live a long time and need a properly heated tank. Visiting a "
     "reptile shop together to learn more is a good first step."),
    ("I made soup and it tastes of nothing.",
     "Usually it needs more salt and a little acid. A squeeze of citrus or a dash of vinegar at the end "
     "wakes up the flavours."),
    ("The wifi in the back room barely works.",
     "Thick walls block the signal. Moving the router higher and more central, or adding a small extender, "
     "usually fixes the dead spot."),
)

_TEMPLATE_OVERHEAD = 33  # SmolLM2's default system prompt and its markers
_MESSAGE_OVERHEAD = 5    # role markers and end of turn per message
_CHARS_PER_TOKEN = 4.3
_MAX_DRAWS = 40


def _est_tokens(text: str) -> int:
    return int(len(text) / _CHARS_PER_TOKEN) + _MESSAGE_OVERHEAD


def _norm(text: str) -> str:
    """Lower case, every run of non-alphanumerics one space: the view in which a value must occur once."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def count_value(text: str, value: str) -> int:
    """Occurrences of ``value`` in ``text`` as whole words (both normalised)."""
    hay, needle = f" {_norm(text)} ", f" {_norm(value)} "
    return sum(1 for i in range(len(hay)) if hay.startswith(needle, i))


def _ordinal(day: int) -> str:
    return f"{day}{'th' if 11 <= day <= 13 else {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th')}"


def draw_value(fact: Fact, rng: random.Random) -> str:
    """One value of ``fact``'s kind, as it is written in the history (and in the answer)."""
    if fact.kind == "digits":
        n = rng.randint(*fact.digits)
        return str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(n - 1))
    if fact.kind == "code":
        def letters(k: int) -> str:
            return "".join(rng.choice(CODE_LETTERS) for _ in range(k))

        def digits(k: int) -> str:
            return "".join(rng.choice("0123456789") for _ in range(k))

        shape = rng.randrange(6)
        if shape == 0:
            return letters(2) + digits(rng.randint(3, 5))
        if shape == 1:
            return f"{letters(rng.randint(2, 3))}-{digits(rng.randint(3, 4))}"
        if shape == 2:
            return digits(rng.randint(3, 4)) + letters(2)
        if shape == 3:
            return "".join(letters(1) + digits(1) for _ in range(3))
        if shape == 4:
            return f"{letters(3)}{digits(2)}{letters(1)}"
        return f"{digits(2)}-{letters(2)}-{digits(2)}"
    if fact.kind == "person":
        first = rng.choice(FIRST_NAMES)
        return f"{first} {rng.choice(SURNAMES)}" if rng.random() < 0.3 else first
    if fact.kind == "place":
        return rng.choice(TOWNS)
    if fact.kind == "date":
        day, month = rng.randint(1, 28), rng.choice(MONTHS)
        form = rng.randrange(5)
        if form == 0:
            return f"{day} {month}"
        if form == 1:
            return f"{month} {day}"
        if form == 2:
            return f"{month} {_ordinal(day)}"
        if form == 3:  # stated "the 4th of May": the article is not part of the value
            return f"{_ordinal(day)} of {month}"
        return f"{day} {month} {rng.randint(2024, 2027)}"
    if fact.kind == "phrase":
        if rng.random() < 0.7:
            return f"{rng.choice(TITLE_WORDS)} {rng.choice(TITLE_NOUNS)}"
        a, b = rng.sample(TITLE_NOUNS, 2)
        return f"{a} of the {rng.choice(TITLE_WORDS)} {b}"
    raise ValueError(f"fact {fact.key}: unknown kind {fact.kind!r}")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def statement_templates(fact: Fact, family: str) -> list[str]:
    """Every statement of ``fact`` in ``family``, with ``{v}`` for the value."""
    if family == "topic_a":
        return [fact.said[0]]
    if family == "topic_b":
        return [fact.said[1]]
    return [t.format(np=np, NP=_cap(np), v="{v}") for t in STATEMENT_FAMILIES[family] for np in fact.nouns]


def question_texts(fact: Fact, family: str) -> list[str]:
    if family == "topic_a":
        return [fact.asked[0]]
    if family == "topic_b":
        return [fact.asked[1]]
    return [t.format(np=np, NP=_cap(np)) for t in QUESTION_FAMILIES[family] for np in fact.nouns]


def _split_families(heldout: Sequence[str], table: dict[str, tuple[str, ...]], what: str) -> tuple[list, list]:
    heldout = list(heldout)
    unknown = sorted(set(heldout) - set(table))
    if unknown:
        raise ConfigError(f"recall_diverse: unknown {what} families {unknown}; known: {', '.join(table)}")
    train = [f for f in table if f not in heldout]
    if not train:
        raise ConfigError(f"recall_diverse: every {what} family is held out; training needs at least one")
    return train, [f for f in table if f in heldout]


def generate_dialogue(seed: int, index: int, *, heldout: bool = False,
                      heldout_statement: Sequence[str] = DEFAULT_HELDOUT_STATEMENT,
                      heldout_question: Sequence[str] = DEFAULT_HELDOUT_QUESTION,
                      facts: tuple[int, int] = (1, 4),
                      history_tokens: tuple[int, int] = (100, 1000)) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Dialogue ``index`` of the training (or held-out) stream of ``seed``: ``(messages ending in question and
    answer, metadata)``."""
    train_st, held_st = _split_families(heldout_statement, STATEMENT_FAMILIES, "statement")
    train_q, held_q = _split_families(heldout_question, QUESTION_FAMILIES, "question")
    if heldout and not (held_st and held_q):
        raise ConfigError("recall_diverse: held-out dialogues need at least one held-out statement family and one "
                          "held-out question family")
    side = "heldout" if heldout else "train"
    rng = random.Random(stable_hash("recall-diverse", GENERATOR_VERSION, seed, side, index))
    n_facts = rng.randint(*facts)
    chosen = rng.sample(FACTS, n_facts)
    # a distractor of the asked fact's format half of the time: telling same-looking values apart is the skill
    if n_facts > 1 and rng.random() < 0.5:
        same = [f for f in FACTS if f.kind == chosen[0].kind and f not in chosen]
        if same:
            chosen[1] = rng.choice(same)

    values: list[str] = []
    statements: list[str] = []
    families: list[str] = []
    for k, fact in enumerate(chosen):
        family = rng.choice(held_st if heldout and k == 0 else train_st)
        template = rng.choice(statement_templates(fact, family))
        for _ in range(_MAX_DRAWS):
            value = draw_value(fact, rng)
            said = f"the {value}" if fact.kind == "date" and " of " in value else value
            text = template.format(v=said)
            # each value must be stated once: not inside another value, not in another fact's sentence
            clash = any(count_value(v, value) or count_value(value, v) or count_value(s, value) or count_value(text, v)
                        for v, s in zip(values, statements))
            if not clash and count_value(text, value) == 1:
                break
        else:  # pragma: no cover - pools are far larger than four facts
            raise RuntimeError(f"recall_diverse: no distinct value for {fact.key} after {_MAX_DRAWS} draws")
        values.append(value)
        statements.append(text)
        families.append(family)
    q_family = rng.choice(held_q if heldout else train_q)
    question = rng.choice(question_texts(chosen[0], q_family))
    said = f"the {values[0]}" if chosen[0].kind == "date" and " of " in values[0] else values[0]
    answer = _cap(rng.choice(ANSWERS).format(v=said))

    # Facts as exchanges at random depths; small talk fills up to a length drawn per dialogue.
    target = rng.randint(*history_tokens)
    acks = rng.sample(ACKNOWLEDGEMENTS, n_facts)  # no reply twice in one dialogue
    exchanges = [(s, acks[k], k) for k, s in enumerate(statements)]
    if n_facts > 1 and rng.random() < 0.2:  # two facts in one message, as people do
        (s1, a1, k1), (s2, _, k2) = exchanges[-2:]
        exchanges[-2:] = [(f"{s1} {s2}", a1, min(k1, k2))]
    used = _TEMPLATE_OVERHEAD + sum(_est_tokens(u) + _est_tokens(a) for u, a, _ in exchanges)
    talk = list(SMALL_TALK)
    rng.shuffle(talk)
    fillers = []
    for user, reply in talk:
        cost = _est_tokens(user) + _est_tokens(reply)
        if used + cost > target:
            if target - used > cost // 2:  # closer to the target with it than without
                fillers.append((user, reply, None))
                used += cost
            break
        fillers.append((user, reply, None))
        used += cost
    for ex in exchanges:
        fillers.insert(rng.randint(0, len(fillers)), ex)
    messages: list[dict[str, str]] = []
    asked_turn = -1
    for user, reply, which in fillers:
        if which is not None and count_value(user, values[0]):
            asked_turn = len(messages)
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": reply})
    history = "\n".join(m["content"] for m in messages)
    if count_value(history, values[0]) != 1 or count_value(question, values[0]):
        raise AssertionError(f"recall_diverse {side} {seed}/{index}: the asked value {values[0]!r} must occur once "
                             "in the history and never in the question")
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    meta = {"question": question, "references": [answer], "evidence": values[0], "kind": chosen[0].kind,
            "fact": chosen[0].key, "statement_family": families[0], "question_family": q_family,
            "distractor_families": families[1:], "distractors": values[1:], "n_facts": n_facts,
            "estimated_tokens": used, "depth": asked_turn / max(1, len(messages) - 4), "heldout": heldout}
    return messages, meta


class RecallDiverse(Source):
    """``conversations`` training dialogues and ``heldout_conversations`` held-out ones, one question each.

    The held-out split is by template family (see the module docstring): ``heldout_fraction`` does not apply
    to this source; every conversation carries ``metadata["heldout"]``.
    """

    def __init__(self, conversations: int = 4000, heldout_conversations: int = 240, seed: int = 0,
                 facts: Any = (1, 4), history_tokens: Any = (100, 1000),
                 heldout_statement_families: Any = DEFAULT_HELDOUT_STATEMENT,
                 heldout_question_families: Any = DEFAULT_HELDOUT_QUESTION, system: str | None = None,
                 name: str = "recall_diverse") -> None:
        if int(conversations) < 1 or int(heldout_conversations) < 0:
            raise ConfigError(f"recall_diverse: conversations must be >= 1 and heldout_conversations >= 0, got "
                              f"{conversations}, {heldout_conversations}")
        try:
            self.facts = (int(facts[0]), int(facts[1]))
            self.history_tokens = (int(history_tokens[0]), int(history_tokens[1]))
        except (TypeError, ValueError, IndexError):
            raise ConfigError(f"recall_diverse: facts={facts!r} and history_tokens={history_tokens!r} must be "
                              "[min, max] pairs of integers") from None
        if not 1 <= self.facts[0] <= self.facts[1] <= 4:
            raise ConfigError(f"recall_diverse: facts={list(self.facts)} must be a range within [1, 4]")
        if not 50 <= self.history_tokens[0] <= self.history_tokens[1]:
            raise ConfigError(f"recall_diverse: history_tokens={list(self.history_tokens)} must be a [min, max] "
                              "range with min >= 50")
        for label, fams in (("heldout_statement_families", heldout_statement_families),
                            ("heldout_question_families", heldout_question_families)):
            if isinstance(fams, str) or not all(isinstance(f, str) for f in fams or ()):
                raise ConfigError(f"recall_diverse: {label} must be a list of family names, got {fams!r}")
        self.heldout_statement = tuple(heldout_statement_families or ())
        self.heldout_question = tuple(heldout_question_families or ())
        _split_families(self.heldout_statement, STATEMENT_FAMILIES, "statement")
        _split_families(self.heldout_question, QUESTION_FAMILIES, "question")
        if int(heldout_conversations) and not (self.heldout_statement and self.heldout_question):
            raise ConfigError("recall_diverse: heldout_conversations > 0 needs at least one held-out statement "
                              "family and one held-out question family (or set heldout_conversations: 0)")
        self.n = int(conversations)
        self.n_heldout = int(heldout_conversations)
        self.seed = int(seed)
        self.system = system or None
        self.name = name

    def dialogue(self, index: int, heldout: bool = False) -> tuple[list[dict[str, str]], dict[str, Any]]:
        return generate_dialogue(self.seed, index, heldout=heldout, heldout_statement=self.heldout_statement,
                                 heldout_question=self.heldout_question, facts=self.facts,
                                 history_tokens=self.history_tokens)

    def conversations(self) -> list[Conversation]:
        out = []
        for heldout, n in ((False, self.n), (True, self.n_heldout)):
            for i in range(n):
                messages, meta = self.dialogue(i, heldout)
                if self.system:
                    messages = [{"role": "system", "content": self.system}] + messages
                group = f"s{self.seed}-{'heldout' if heldout else 'train'}-c{i}"
                # the version in the id: the training data's fingerprint (ids) then refuses to resume a run on
                # dialogues a changed generator would write differently
                out.append(Conversation(id=f"{self.name}/v{GENERATOR_VERSION}/{group}", source=self.name, group=group,
                                        messages=tuple(messages), metadata=meta))
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "conversations": self.n, "heldout_conversations": self.n_heldout,
                "seed": self.seed, "facts": list(self.facts), "history_tokens": list(self.history_tokens),
                "heldout_statement_families": list(self.heldout_statement),
                "heldout_question_families": list(self.heldout_question), "generator_version": GENERATOR_VERSION}
